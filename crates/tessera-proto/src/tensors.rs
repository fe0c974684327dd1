//! Parameter sets on the wire: a layout, then chunks of little-endian `f32`.

use tessera_core::{ParameterSet, Tensor};

use crate::ProtoError;
use crate::pb::{TensorChunk, TensorSpec};

/// Bounds on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Values in one parameter set (default 2^31: 8 GiB of `f32`).
    pub max_values: u64,
    /// Tensors in one parameter set.
    pub max_tensors: usize,
    /// Bytes of values in one chunk.
    pub max_chunk_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_values: 1 << 31,
            max_tensors: 10_000,
            max_chunk_bytes: 4 << 20,
        }
    }
}

/// Bytes of values per chunk that senders use.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The layout of a parameter set.
pub fn layout_of(set: &ParameterSet) -> Vec<TensorSpec> {
    set.iter()
        .map(|(name, t)| TensorSpec {
            name: name.to_string(),
            shape: t.shape().iter().map(|&d| d as u64).collect(),
        })
        .collect()
}

/// The chunks of `params`, made one at a time, each at most `max_bytes` of values.
pub fn chunks(
    set: u32,
    params: &ParameterSet,
    max_bytes: usize,
) -> impl Iterator<Item = TensorChunk> + '_ {
    let per_chunk = (max_bytes / 4).max(1);
    params
        .tensors()
        .iter()
        .enumerate()
        .flat_map(move |(index, tensor)| {
            tensor
                .data()
                .chunks(per_chunk)
                .enumerate()
                .map(move |(k, values)| {
                    let mut bytes = Vec::with_capacity(values.len() * 4);
                    for v in values {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                    TensorChunk {
                        set,
                        tensor: index as u32,
                        offset: (k * per_chunk) as u64,
                        values: bytes,
                    }
                })
        })
}

/// A parameter set as one stored message (models in the database, `--model-out` files).
pub fn encode_parameters(params: &ParameterSet) -> Vec<u8> {
    use prost::Message;
    stored_parameters(params).encode_to_vec()
}

/// A parameter set as one message: its layout and every value.
pub fn stored_parameters(params: &ParameterSet) -> crate::pb::StoredParameters {
    let mut values = Vec::with_capacity(params.n_values() * 4);
    for v in params.values() {
        values.extend_from_slice(&v.to_le_bytes());
    }
    crate::pb::StoredParameters {
        layout: layout_of(params),
        values,
    }
}

/// A parameter set from [`encode_parameters`]' bytes, checked.
pub fn decode_parameters(bytes: &[u8]) -> Result<ParameterSet, ProtoError> {
    use prost::Message;
    let stored = crate::pb::StoredParameters::decode(bytes)
        .map_err(|e| ProtoError::Malformed(format!("stored parameters: {e}")))?;
    let limits = Limits {
        max_chunk_bytes: usize::MAX,
        ..Limits::default()
    };
    parameters_from_stored(&stored, limits)
}

/// The parameter set a [`crate::pb::StoredParameters`] holds, checked
/// against `limits` (its values, its tensors).
pub fn parameters_from_stored(
    stored: &crate::pb::StoredParameters,
    limits: Limits,
) -> Result<ParameterSet, ProtoError> {
    let mut assembler = Assembler::new(&stored.layout, limits)?;
    let mut offset = 0usize;
    for (index, &length) in assembler.lengths.clone().iter().enumerate() {
        let end = offset.saturating_add(length.saturating_mul(4));
        let Some(values) = stored.values.get(offset..end) else {
            return Err(ProtoError::Malformed(
                "stored parameters: values end early".into(),
            ));
        };
        if length > 0 {
            assembler.push(&TensorChunk {
                set: 0,
                tensor: index as u32,
                offset: 0,
                values: values.to_vec(),
            })?;
        }
        offset = end;
    }
    if offset != stored.values.len() {
        return Err(ProtoError::Malformed(
            "stored parameters: values left over".into(),
        ));
    }
    assembler.finish()
}

/// Rebuilds a parameter set from a layout and its chunks, which must come in
/// order. Memory grows with the values received, never with what a layout
/// merely announces.
#[derive(Debug)]
pub struct Assembler {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    lengths: Vec<usize>,
    data: Vec<Vec<f32>>,
    tensor: usize,
    limits: Limits,
}

impl Assembler {
    /// Checks the layout against the limits.
    pub fn new(layout: &[TensorSpec], limits: Limits) -> Result<Self, ProtoError> {
        if layout.len() > limits.max_tensors {
            return Err(ProtoError::TooLarge(format!(
                "{} tensors, at most {} allowed",
                layout.len(),
                limits.max_tensors
            )));
        }
        let mut names = Vec::with_capacity(layout.len());
        let mut shapes = Vec::with_capacity(layout.len());
        let mut lengths = Vec::with_capacity(layout.len());
        let mut total: u64 = 0;
        for spec in layout {
            if names.contains(&spec.name) {
                return Err(ProtoError::Malformed(format!(
                    "tensor '{}' appears twice",
                    spec.name
                )));
            }
            let length = spec.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            total = length
                .and_then(|l| total.checked_add(l))
                .unwrap_or(u64::MAX);
            if total > limits.max_values {
                return Err(ProtoError::TooLarge(format!(
                    "more than {} values (tensor '{}')",
                    limits.max_values, spec.name
                )));
            }
            let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
            lengths.push(shape.iter().product());
            shapes.push(shape);
            names.push(spec.name.clone());
        }
        let mut assembler = Self {
            data: vec![Vec::new(); names.len()],
            names,
            shapes,
            lengths,
            tensor: 0,
            limits,
        };
        assembler.skip_full();
        Ok(assembler)
    }

    /// Checks that the announced layout is `expected`'s.
    pub fn expect_layout_of(&self, expected: &ParameterSet) -> Result<(), ProtoError> {
        let same = self.names.len() == expected.n_tensors()
            && expected
                .iter()
                .zip(self.names.iter().zip(&self.shapes))
                .all(|((name, t), (n, s))| name == n && t.shape() == s.as_slice());
        if same {
            Ok(())
        } else {
            Err(ProtoError::Malformed(format!(
                "layout [{}] is not the model's [{}]",
                describe(
                    self.names
                        .iter()
                        .map(String::as_str)
                        .zip(self.shapes.iter().map(Vec::as_slice))
                ),
                describe(expected.iter().map(|(n, t)| (n, t.shape())))
            )))
        }
    }

    fn skip_full(&mut self) {
        while self.tensor < self.names.len()
            && self.data[self.tensor].len() == self.lengths[self.tensor]
        {
            self.tensor += 1;
        }
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: &TensorChunk) -> Result<(), ProtoError> {
        if chunk.values.len() > self.limits.max_chunk_bytes {
            return Err(ProtoError::TooLarge(format!(
                "chunk of {} bytes, at most {} allowed",
                chunk.values.len(),
                self.limits.max_chunk_bytes
            )));
        }
        if !chunk.values.len().is_multiple_of(4) {
            return Err(ProtoError::Malformed(format!(
                "chunk of {} bytes is not whole f32 values",
                chunk.values.len()
            )));
        }
        let Some(name) = self.names.get(self.tensor) else {
            return Err(ProtoError::Malformed("chunk after the last tensor".into()));
        };
        let received = self.data[self.tensor].len();
        if chunk.tensor as usize != self.tensor || chunk.offset != received as u64 {
            return Err(ProtoError::Malformed(format!(
                "chunk for tensor {} at {}, expected tensor {} ('{name}') at {received}",
                chunk.tensor, chunk.offset, self.tensor
            )));
        }
        let n = chunk.values.len() / 4;
        if received + n > self.lengths[self.tensor] {
            return Err(ProtoError::Malformed(format!(
                "tensor '{name}' overflows: {} values for {}",
                received + n,
                self.lengths[self.tensor]
            )));
        }
        let data = &mut self.data[self.tensor];
        data.extend(
            chunk
                .values
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        self.skip_full();
        Ok(())
    }

    /// Whether every value has arrived.
    pub fn is_complete(&self) -> bool {
        self.tensor == self.names.len()
    }

    /// The parameter set; fails if values are missing.
    pub fn finish(self) -> Result<ParameterSet, ProtoError> {
        if !self.is_complete() {
            return Err(ProtoError::Malformed(format!(
                "tensor '{}' is incomplete",
                self.names[self.tensor]
            )));
        }
        let mut set = ParameterSet::new();
        for ((name, shape), data) in self.names.into_iter().zip(self.shapes).zip(self.data) {
            let tensor =
                Tensor::new(shape, data).map_err(|e| ProtoError::Malformed(e.to_string()))?;
            set.push(name, tensor)
                .map_err(|e| ProtoError::Malformed(e.to_string()))?;
        }
        Ok(set)
    }
}

fn describe<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize])>) -> String {
    tensors
        .map(|(n, s)| format!("{n} {s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(shapes: &[Vec<usize>]) -> ParameterSet {
        let mut p = ParameterSet::new();
        let mut k = 0.0f32;
        for (i, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    k += 0.25;
                    k
                })
                .collect();
            p.push(format!("t{i}"), Tensor::new(shape.clone(), data).unwrap())
                .unwrap();
        }
        p
    }

    proptest! {
        /// Any layout and chunk size round-trips exactly.
        #[test]
        fn round_trip(shapes in proptest::collection::vec(proptest::collection::vec(0usize..7, 0..3), 0..5), bytes in 4usize..64) {
            let original = set(&shapes);
            let mut assembler = Assembler::new(&layout_of(&original), Limits::default()).unwrap();
            for chunk in chunks(0, &original, bytes) {
                prop_assert!(chunk.values.len() <= bytes.max(4));
                assembler.push(&chunk).unwrap();
            }
            prop_assert_eq!(assembler.finish().unwrap(), original);
        }
    }

    #[test]
    fn stored_parameters_round_trip() {
        let original = set(&[vec![3, 2], vec![0], vec![4]]);
        let bytes = encode_parameters(&original);
        assert_eq!(decode_parameters(&bytes).unwrap(), original);
        assert!(decode_parameters(&bytes[..bytes.len() - 4]).is_err());
        assert!(decode_parameters(b"garbage").is_err());
    }

    #[test]
    fn bad_chunks_are_refused_with_a_reason() {
        let original = set(&[vec![3], vec![2]]);
        let layout = layout_of(&original);
        let all: Vec<TensorChunk> = chunks(0, &original, 8).collect();
        let mut a = Assembler::new(&layout, Limits::default()).unwrap();
        let err = a.push(&all[1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed message: chunk for tensor 0 at 2, expected tensor 0 ('t0') at 0"
        );
        let mut odd = all[0].clone();
        odd.values.pop();
        assert!(
            a.push(&odd)
                .unwrap_err()
                .to_string()
                .contains("not whole f32")
        );
        a.push(&all[0]).unwrap();
        let err = Assembler::new(&layout, Limits::default())
            .unwrap()
            .finish()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed message: tensor 't0' is incomplete"
        );
        let mut too_long = all[2].clone();
        too_long.values.extend_from_slice(&[0; 8]);
        a.push(&all[1]).unwrap();
        assert!(
            a.push(&too_long)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
        let huge = vec![TensorSpec {
            name: "w".into(),
            shape: vec![u64::MAX, 2],
        }];
        assert!(matches!(
            Assembler::new(&huge, Limits::default()),
            Err(ProtoError::TooLarge(_))
        ));
        let twice = vec![layout[0].clone(), layout[0].clone()];
        assert!(
            Assembler::new(&twice, Limits::default())
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let other =
            Assembler::new(&layout_of(&set(&[vec![2], vec![3]])), Limits::default()).unwrap();
        assert!(other.expect_layout_of(&original).is_err());
    }
}
