//! Quantisation into `Z_2^32` and back, and the split of a summed update from its metadata.

#[cfg(doc)]
use crate::{Client, Server};
use crate::{METADATA_LEN, MetadataSum, RoundParams, SecAggError, decode_metadata_sum};

/// Quantises `values` into `[0, 2^bits)` after clipping to `[-range, range]`.
pub fn quantize(values: &[f32], params: &RoundParams) -> Vec<u32> {
    let levels = ((1u64 << params.bits()) - 1) as f64;
    let r = f64::from(params.range);
    values
        .iter()
        .map(|&x| {
            let x = f64::from(x).clamp(-r, r);
            ((x + r) / (2.0 * r) * levels).round() as u32
        })
        .collect()
}

/// The real-valued sum of `count` quantised vectors whose sum is `sum`.
pub fn dequantize_sum(sum: &[u32], count: usize, params: &RoundParams) -> Vec<f64> {
    let step = params.step();
    let offset = count as f64 * f64::from(params.range);
    sum.iter().map(|&s| f64::from(s) * step - offset).collect()
}

/// Splits the sum of a round's masked updates ([`Server::finish`] of
/// inputs from [`Client::masked_update`]) into the real-valued sum of the
/// `count` survivors' updates and the sums of their metadata. Refuses a sum
/// of another length than the round's dimension, or one too short to hold
/// the metadata.
pub fn split_sum(
    sum: &[u32],
    count: usize,
    params: &RoundParams,
) -> Result<(Vec<f64>, MetadataSum), SecAggError> {
    if sum.len() != params.dimension || sum.len() < METADATA_LEN {
        return Err(SecAggError::Config(format!(
            "a sum of {} values, the round has {} (the update and {METADATA_LEN} of metadata)",
            sum.len(),
            params.dimension
        )));
    }
    let (update, meta) = sum.split_at(sum.len() - METADATA_LEN);
    Ok((
        dequantize_sum(update, count, params),
        decode_metadata_sum(meta, count)?,
    ))
}
