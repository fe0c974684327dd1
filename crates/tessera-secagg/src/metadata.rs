//! A participant's training metadata (example count, train loss, step count)
//! carried inside its masked vector, so that the server learns only the
//! cohort's sums of them, never one participant's.
//!
//! The metadata takes [`METADATA_LEN`] = 10 coordinates of `Z_2^32`, appended
//! after the quantised update (which keeps the first `dimension - 10`
//! coordinates; quantisation applies to it only). Every coordinate is a 16-bit
//! limb (a value in `[0, 2^16)`), so the sum of one coordinate over at most
//! [`MAX_SUMMANDS`] = 65,536 participants is at most `65,536 x 65,535 < 2^32`
//! and never wraps: the masked sum of a limb is the exact integer sum, and
//! `sum_i limb_sum_i << 16 i` recombines the exact sum of the values.
//!
//! | coordinates | what | encoding |
//! |---|---|---|
//! | 0..4 | example count (`u64`) | four 16-bit limbs, least significant first |
//! | 4..6 | train loss | fixed point `round(loss x 2^16)` (resolution 2^-16) in `[0, 2^32)`, two 16-bit limbs, least significant first |
//! | 6..10 | step count (`u64`) | four 16-bit limbs, least significant first |
//!
//! The loss is clipped to `[0, MAX_LOSS]` with `MAX_LOSS = (2^32 - 1) / 2^16`
//! (just below 65,536) before it is rounded: a negative loss (and `-inf`)
//! counts as 0, one above `MAX_LOSS` (and `+inf`) as `MAX_LOSS`, and NaN as 0
//! (as [`crate::quantize`] maps NaN to its lowest level). Counts are encoded
//! exactly, all 64 bits; a sum that does not fit a `u64` is refused when
//! decoded.
//!
//! As with the update's coordinates, nothing stops a dishonest participant
//! from putting any value of `Z_2^32` in these (inflating the sums, or making
//! a limb sum wrap); decoding such a sum gives wrong totals or an error,
//! never a panic.

use crate::SecAggError;

/// Coordinates of `Z_2^32` that carry one participant's metadata.
pub const METADATA_LEN: usize = 10;

/// The most participants whose limbs sum without wrapping: `2^16`.
pub const MAX_SUMMANDS: usize = 1 << 16;

/// The largest train loss the encoding holds, `(2^32 - 1) / 2^16`
/// (65,535.99998...); larger losses are clipped to it.
pub const MAX_LOSS: f64 = u32::MAX as f64 / LOSS_SCALE;

/// Fixed-point scale of the train loss: resolution `2^-16`.
const LOSS_SCALE: f64 = 65_536.0;

const LIMB_BITS: u32 = 16;
const LIMB_MASK: u64 = 0xFFFF;

/// One participant's training metadata, as it goes into the masked vector.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Metadata {
    /// Training examples behind the update.
    pub n_examples: u64,
    /// Mean training loss (clipped to `[0, MAX_LOSS]` when encoded).
    pub train_loss: f64,
    /// Optimiser steps taken.
    pub n_steps: u64,
}

/// The sums of the survivors' metadata, recovered from the masked sum.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetadataSum {
    /// How many participants the sums are over.
    pub count: usize,
    /// The sum of their example counts.
    pub n_examples: u64,
    /// The sum of their fixed-point train losses (a multiple of `2^-16`).
    pub train_loss: f64,
    /// The sum of their step counts.
    pub n_steps: u64,
}

impl MetadataSum {
    /// The mean train loss over the `count` participants (0 for none).
    pub fn mean_train_loss(&self) -> f64 {
        self.train_loss / self.count.max(1) as f64
    }
}

fn limbs4(value: u64) -> [u32; 4] {
    std::array::from_fn(|i| ((value >> (LIMB_BITS * i as u32)) & LIMB_MASK) as u32)
}

/// The fixed-point code of a train loss, in `[0, 2^32)` (see the module
/// documentation for clamping).
pub fn loss_code(loss: f64) -> u32 {
    if loss.is_nan() {
        return 0;
    }
    // In [0, 2^32 - 1] after clamping: the cast is exact after rounding.
    (loss.clamp(0.0, MAX_LOSS) * LOSS_SCALE).round() as u32
}

/// The [`METADATA_LEN`] coordinates that carry `meta` (every one below `2^16`).
pub fn encode_metadata(meta: &Metadata) -> [u32; METADATA_LEN] {
    let mut out = [0u32; METADATA_LEN];
    out[0..4].copy_from_slice(&limbs4(meta.n_examples));
    let loss = loss_code(meta.train_loss);
    out[4] = loss & LIMB_MASK as u32;
    out[5] = loss >> LIMB_BITS;
    out[6..10].copy_from_slice(&limbs4(meta.n_steps));
    out
}

/// `sum_i limbs[i] << 16 i`, exactly (at most `2^32 x 2^49 < 2^128`).
fn recombine(limbs: &[u32]) -> u128 {
    limbs
        .iter()
        .enumerate()
        .map(|(i, &l)| u128::from(l) << (LIMB_BITS as usize * i))
        .sum()
}

/// The metadata sums of `count` participants from the sum of their encoded
/// coordinates (`sum`, exactly [`METADATA_LEN`] values in `Z_2^32`). Refuses
/// more than [`MAX_SUMMANDS`] participants (their limb sums could have
/// wrapped) and counts whose sum does not fit a `u64`.
pub fn decode_metadata_sum(sum: &[u32], count: usize) -> Result<MetadataSum, SecAggError> {
    if sum.len() != METADATA_LEN {
        return Err(SecAggError::Config(format!(
            "the metadata takes {METADATA_LEN} coordinates, got {}",
            sum.len()
        )));
    }
    if count > MAX_SUMMANDS {
        return Err(SecAggError::Config(format!(
            "the metadata of {count} participants: at most {MAX_SUMMANDS} sum without wrapping"
        )));
    }
    let total = |what: &str, limbs: &[u32]| {
        u64::try_from(recombine(limbs)).map_err(|_| {
            SecAggError::Config(format!(
                "the sum of {count} participants' {what} does not fit in 64 bits"
            ))
        })
    };
    let n_examples = total("example counts", &sum[0..4])?;
    let n_steps = total("step counts", &sum[6..10])?;
    // At most 2^16 x 2^32 = 2^48 < 2^53: exact in an f64, and so is the division.
    let loss = (u64::from(sum[5]) << LIMB_BITS) + u64::from(sum[4]);
    Ok(MetadataSum {
        count,
        n_examples,
        train_loss: loss as f64 / LOSS_SCALE,
        n_steps,
    })
}

/// The length of the masked vector of a round whose updates have
/// `update_len` values: the update, then the metadata.
pub fn masked_dimension(update_len: usize) -> usize {
    update_len.saturating_add(METADATA_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sum_of(metas: &[Metadata]) -> Vec<u32> {
        let mut sum = vec![0u32; METADATA_LEN];
        for m in metas {
            for (s, v) in sum.iter_mut().zip(encode_metadata(m)) {
                *s = s.wrapping_add(v);
            }
        }
        sum
    }

    #[test]
    fn every_coordinate_is_a_16_bit_limb() {
        let extreme = Metadata {
            n_examples: u64::MAX,
            train_loss: f64::INFINITY,
            n_steps: u64::MAX,
        };
        assert_eq!(encode_metadata(&extreme), [0xFFFF; METADATA_LEN]);
        assert_eq!(encode_metadata(&Metadata::default()), [0; METADATA_LEN]);
        let one = Metadata {
            n_examples: 0x0001_0002_0003_0004,
            train_loss: 1.5,
            n_steps: 0x0005_0000_0000_FFFF,
        };
        assert_eq!(
            encode_metadata(&one),
            [4, 3, 2, 1, 0x8000, 1, 0xFFFF, 0, 0, 5]
        );
    }

    #[test]
    fn sums_recombine_exactly_at_the_limits() {
        // 65,536 participants at the largest loss and 2^48 - 1 examples each:
        // every limb sum is 65,536 x 65,535, the largest that cannot wrap.
        let near = Metadata {
            n_examples: (1 << 48) - 1,
            train_loss: MAX_LOSS,
            n_steps: 0xFFFF_FFFF_FFFF,
        };
        let metas = vec![near; MAX_SUMMANDS];
        let sum = sum_of(&metas);
        assert_eq!(sum[0], 65_536 * 65_535);
        let got = decode_metadata_sum(&sum, MAX_SUMMANDS).unwrap();
        assert_eq!(got.n_examples, ((1u64 << 48) - 1) << 16);
        assert_eq!(got.n_steps, 0xFFFF_FFFF_FFFF << 16);
        assert_eq!(got.train_loss, MAX_LOSS * 65_536.0);
        assert_eq!(got.mean_train_loss(), MAX_LOSS);
        // Example counts near 2^48, different at every limb.
        let metas: Vec<Metadata> = (0..1_000u64)
            .map(|i| Metadata {
                n_examples: (1 << 48) - 1 - i * 0x1_0001_0001,
                train_loss: i as f64 / 1024.0,
                n_steps: (1 << 48) + i,
            })
            .collect();
        let got = decode_metadata_sum(&sum_of(&metas), metas.len()).unwrap();
        assert_eq!(
            got.n_examples,
            metas.iter().map(|m| m.n_examples).sum::<u64>()
        );
        assert_eq!(got.n_steps, metas.iter().map(|m| m.n_steps).sum::<u64>());
        // Multiples of 2^-10 are exact in 2^-16 fixed point.
        assert_eq!(
            got.train_loss,
            metas.iter().map(|m| m.train_loss).sum::<f64>()
        );
        // One participant's full u64 round-trips.
        let max = Metadata {
            n_examples: u64::MAX,
            train_loss: 0.0,
            n_steps: u64::MAX - 1,
        };
        let got = decode_metadata_sum(&sum_of(&[max]), 1).unwrap();
        assert_eq!((got.n_examples, got.n_steps), (u64::MAX, u64::MAX - 1));
    }

    #[test]
    fn losses_clamp_and_round_to_the_fixed_point_grid() {
        let code = |loss: f64| loss_code(loss);
        assert_eq!(code(-1.0), 0);
        assert_eq!(code(f64::NEG_INFINITY), 0);
        assert_eq!(code(f64::NAN), 0);
        assert_eq!(code(-0.0), 0);
        assert_eq!(code(65_536.0), u32::MAX);
        assert_eq!(code(1e300), u32::MAX);
        assert_eq!(code(f64::INFINITY), u32::MAX);
        assert_eq!(code(MAX_LOSS), u32::MAX);
        assert_eq!(code(1.0), 1 << 16);
        assert_eq!(code(0.612_345), (0.612_345f64 * 65_536.0).round() as u32);
        // Half a step rounds away from zero; less rounds down.
        assert_eq!(code(1.5 / 65_536.0), 2);
        assert_eq!(code(1.4 / 65_536.0), 1);
        let decoded = |loss: f64| {
            decode_metadata_sum(
                &encode_metadata(&Metadata {
                    train_loss: loss,
                    ..Metadata::default()
                }),
                1,
            )
            .unwrap()
            .train_loss
        };
        for loss in [0.0, 0.25, 0.612_345, 2.345_678, 1_000.123, 65_535.5] {
            assert!((decoded(loss) - loss).abs() <= 0.5 / 65_536.0, "{loss}");
        }
        assert_eq!(decoded(-3.0), 0.0);
        assert_eq!(decoded(f64::INFINITY), MAX_LOSS);
    }

    #[test]
    fn sums_that_cannot_be_exact_are_refused() {
        let e = decode_metadata_sum(&[0; METADATA_LEN], MAX_SUMMANDS + 1).unwrap_err();
        assert!(e.to_string().contains("at most 65536"), "{e}");
        let e = decode_metadata_sum(&[0; 9], 3).unwrap_err();
        assert!(e.to_string().contains("10 coordinates, got 9"), "{e}");
        // Two participants at u64::MAX examples: the sum needs 65 bits.
        let max = Metadata {
            n_examples: u64::MAX,
            ..Metadata::default()
        };
        let e = decode_metadata_sum(&sum_of(&[max, max]), 2).unwrap_err();
        assert!(e.to_string().contains("example counts does not fit"), "{e}");
        // Out-of-range coordinates (a participant may send anything) decode
        // to something, without panicking.
        decode_metadata_sum(&[u32::MAX; METADATA_LEN], 1).unwrap_err();
        let got =
            decode_metadata_sum(&[u32::MAX, 0, 0, 0, u32::MAX, u32::MAX, 0, 0, 0, 0], 1).unwrap();
        assert_eq!(got.n_examples, u64::from(u32::MAX));
        assert_eq!(masked_dimension(5), 15);
        assert_eq!(masked_dimension(usize::MAX), usize::MAX);
        assert_eq!(MetadataSum::default().mean_train_loss(), 0.0);
    }
}
