//! Communication efficiency: codecs for updates and models, error feedback,
//! and the bandwidth-adaptive choice of a codec per participant.
//!
//! A [`Codec`] (`topk:0.01+q8`, `randk:0.1`, `fp16`, `q4`, `none`) turns a
//! vector of `f32` into compact bytes ([`Codec::encode`]) and [`decode`]
//! turns them back, validating everything. [`ErrorFeedback`] keeps what a
//! biased codec left out and adds it to the next round's vector (Seide et
//! al. 2014; Stich et al. 2018; Karimireddy et al. 2019). [`Ladder`] picks,
//! for a participant with a measured bandwidth, the least lossy codec whose
//! upload fits a round's time budget.
//!
//! *Invariant:* pure: no I/O, no clocks; the same input, codec and seed give
//! the same bytes on every platform (binary16 and the seeded streams are our
//! own code).
//!
//! A codec is at most one sparsifier, then one value coding; it is parsed,
//! printed and (de)serialised as that text. The encoding describes itself:
//! top-k indices as varint gaps, random-k as a seed, per-chunk ranges and
//! packed levels for qN, binary16 of our own. `CompressionConfig` is the
//! plan's `[compression]`.
//!
//! *Invariant:* `decode(encode(v).bytes) == encode(v).decoded` bit for bit,
//! so the sender's error feedback and the receiver agree; `decode` rejects
//! every malformation (length, index range, trailing bytes, non-finite
//! values) without allocating past the expected length.

#![deny(missing_docs)]

mod codec;
mod config;
mod error;
mod fp16;

pub use codec::{
    Codec, DEFAULT_CHUNK, Encoded, Sparsifier, Values, decode, random_k_indices, scatter,
    top_k_indices,
};
pub use config::{AdaptiveConfig, CompressionConfig, Ladder};
pub use error::CompressError;
pub use fp16::{f16_to_f32, f32_to_f16};

use tessera_core::{ParameterSet, SeededRng};

/// The residual of error feedback: what earlier encodings left out, added to
/// the next vector before it is encoded. Lives with the sender.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// An empty residual.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `values` plus the residual with `codec`, and keeps as the new
    /// residual what the encoding left out.
    pub fn encode(&mut self, codec: &Codec, values: &[f32], rng: &mut SeededRng) -> Encoded {
        self.encode_with(values, |v| codec.encode(v, rng))
    }

    /// As [`ErrorFeedback::encode`] with an encoder of the caller's (a shared seed, say).
    pub fn encode_with(
        &mut self,
        values: &[f32],
        encode: impl FnOnce(&[f32]) -> Encoded,
    ) -> Encoded {
        if self.residual.len() != values.len() {
            self.residual = vec![0.0; values.len()];
        }
        let corrected: Vec<f32> = values
            .iter()
            .zip(&self.residual)
            .map(|(v, r)| v + r)
            .collect();
        let encoded = encode(&corrected);
        for ((r, c), d) in self
            .residual
            .iter_mut()
            .zip(&corrected)
            .zip(&encoded.decoded)
        {
            *r = c - d;
        }
        encoded
    }

    /// The residual's Euclidean norm.
    pub fn norm(&self) -> f64 {
        self.residual
            .iter()
            .map(|&r| f64::from(r) * f64::from(r))
            .sum::<f64>()
            .sqrt()
    }
}

/// Encodes a parameter set's values (in layout order) and returns the bytes
/// and the decoded set.
pub fn encode_set(
    codec: &Codec,
    set: &ParameterSet,
    feedback: Option<&mut ErrorFeedback>,
    rng: &mut SeededRng,
) -> (Vec<u8>, ParameterSet) {
    let values: Vec<f32> = set.values().collect();
    let encoded = match feedback {
        Some(feedback) => feedback.encode(codec, &values, rng),
        None => codec.encode(&values, rng),
    };
    let mut decoded = set.clone();
    for (d, v) in decoded.values_mut().zip(&encoded.decoded) {
        *d = *v;
    }
    (encoded.bytes, decoded)
}

/// Decodes bytes into a parameter set with `layout`'s shape.
pub fn decode_set(bytes: &[u8], layout: &ParameterSet) -> Result<ParameterSet, CompressError> {
    let values = decode(bytes, layout.n_values())?;
    layout
        .with_values(&values)
        .map_err(|e| CompressError::Malformed(e.to_string()))
}
