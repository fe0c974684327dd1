//! Summing the sites' contributions through secure aggregation: each
//! `Z_2^64` value is cut into four 16-bit limbs, each limb a value of
//! `Z_2^32` (the ring `tessera-secagg` masks), so that the limb sums of up
//! to 2^16 sites never wrap; one SecAgg+ round (keys, shares, masked
//! inputs, the consistency check, unmasking) gives the server the limb
//! sums and nothing else, and the limbs recombine into the exact `Z_2^64`
//! sum. In simulation the round runs in process, without signatures, its
//! secrets derived from the answer's noise key.

use tessera_secagg::{Client, MAX_SUMMANDS, RoundParams, SecAggError, Server, Unauthenticated};

use crate::AnalyticsError;

/// 16-bit limbs per `Z_2^64` value.
pub const LIMBS: usize = 4;

/// Fewest sites secure aggregation sums (fewer are summed in the clear).
pub const MIN_SECURE_SITES: usize = 3;

/// Each value's four 16-bit limbs, least significant first, as values of
/// `Z_2^32` (what a site masks).
pub fn limbs(values: &[u64]) -> Vec<u32> {
    values
        .iter()
        .flat_map(|&v| (0..LIMBS).map(move |l| ((v >> (16 * l)) & 0xffff) as u32))
        .collect()
}

/// The `Z_2^64` values whose limbs sum to `sums` (the unmasked sum of
/// [`limbs`] of up to 2^16 sites).
pub fn recombine(sums: &[u32]) -> Vec<u64> {
    sums.chunks(LIMBS)
        .map(|c| {
            c.iter().enumerate().fold(0u64, |acc, (l, &s)| {
                acc.wrapping_add(u64::from(s).wrapping_shl(16 * l as u32))
            })
        })
        .collect()
}

fn secagg(e: SecAggError) -> AnalyticsError {
    AnalyticsError::Query(format!("secure aggregation of the contributions: {e}"))
}

/// The `Z_2^64` sum of `vectors` (one per site, equal lengths), through
/// one SecAgg+ round numbered `round` whose secrets derive from `key`. With fewer than
/// [`MIN_SECURE_SITES`] vectors secure aggregation cannot hide one site's
/// vector from another's, and the sum is plain (`false` in the result).
pub fn secure_sum(
    vectors: &[Vec<u64>],
    round: u32,
    key: &[u8; 32],
) -> Result<(Vec<u64>, bool), AnalyticsError> {
    let dim = vectors.first().map_or(0, Vec::len);
    if vectors.len() < MIN_SECURE_SITES || dim == 0 {
        let mut total = vec![0u64; dim];
        for v in vectors {
            for (t, x) in total.iter_mut().zip(v) {
                *t = t.wrapping_add(*x);
            }
        }
        return Ok((total, false));
    }
    if vectors.len() > MAX_SUMMANDS {
        return Err(AnalyticsError::Query(format!(
            "{} sites: secure aggregation sums the limbs of at most {MAX_SUMMANDS}",
            vectors.len()
        )));
    }
    let ids: Vec<u32> = (0..vectors.len() as u32).collect();
    let graph_seed = crate::run::subkey(key, &[b"analytics-graph", &round.to_le_bytes()]);
    let params = RoundParams::new(round, &ids, graph_seed, dim * LIMBS, 1.0).map_err(secagg)?;
    let mut server = Server::new(params.clone()).map_err(secagg)?;
    let mut clients = Vec::with_capacity(ids.len());
    for &id in &ids {
        let secret = crate::run::subkey(
            key,
            &[b"analytics-secagg", &round.to_le_bytes(), &id.to_le_bytes()],
        );
        let (client, keys) =
            Client::new(id, params.clone(), secret, &Unauthenticated).map_err(secagg)?;
        server.receive_keys(keys).map_err(secagg)?;
        clients.push(client);
    }
    for (&id, client) in ids.iter().zip(clients.iter_mut()) {
        let shares = client
            .share_keys(&server.keys_for(id), &Unauthenticated)
            .map_err(secagg)?;
        server.receive_shares(shares).map_err(secagg)?;
    }
    for ((&id, client), vector) in ids.iter().zip(clients.iter_mut()).zip(vectors) {
        if vector.len() != dim {
            return Err(AnalyticsError::Query(format!(
                "site {id}'s contribution has {} values, the layout {dim}",
                vector.len()
            )));
        }
        let masked = client
            .masked_values(&server.shares_for(id), limbs(vector))
            .map_err(secagg)?;
        server.receive_masked(masked).map_err(secagg)?;
    }
    let request = server.unmask_request();
    for client in clients.iter_mut() {
        let view = client
            .sign_view(&request, &Unauthenticated)
            .map_err(secagg)?;
        server.receive_view(view).map_err(secagg)?;
    }
    let views = server.views();
    for client in clients.iter_mut() {
        let response = client
            .unmask(&request, &views, &Unauthenticated)
            .map_err(secagg)?;
        server.receive_unmask(response).map_err(secagg)?;
    }
    let (sum, count) = server.finish().map_err(secagg)?;
    if count != vectors.len() {
        return Err(AnalyticsError::Query(format!(
            "secure aggregation summed {count} of {} contributions",
            vectors.len()
        )));
    }
    Ok((recombine(&sum), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secure_sum_is_the_wrapping_sum_and_two_sites_are_summed_in_the_clear() {
        let vectors: Vec<Vec<u64>> = (0..5u64)
            .map(|s| {
                (0..40u64)
                    .map(|i| tessera_core::derive_seed(s, &[i]) | (u64::MAX << 60))
                    .collect()
            })
            .collect();
        let mut plain = vec![0u64; 40];
        for v in &vectors {
            for (p, x) in plain.iter_mut().zip(v) {
                *p = p.wrapping_add(*x);
            }
        }
        let (sum, secure) = secure_sum(&vectors, 1, &[9; 32]).unwrap();
        assert!(secure);
        assert_eq!(
            sum, plain,
            "limbs recombine into the Z_2^64 sum, wraps included"
        );
        let (sum, secure) = secure_sum(&vectors[..2], 1, &[9; 32]).unwrap();
        assert!(!secure, "two sites cannot hide from each other");
        assert_eq!(sum.len(), 40);
    }
}
