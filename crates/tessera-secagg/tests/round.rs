//! Secure aggregation rounds with dropouts at every stage, against the plain
//! sum computed independently, and what the server's transcript reveals.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use tessera_secagg::{
    Client, MaskedInput, RoundParams, SecAggError, Server, UnmaskRequest, quantize,
};

struct Outcome {
    server: Server,
    inputs: Vec<Vec<f32>>,
    masked: Vec<MaskedInput>,
    survivors: Vec<u32>,
    result: Result<(Vec<u32>, usize), SecAggError>,
}

fn seed(i: u32, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..4].copy_from_slice(&i.to_le_bytes());
    s
}

/// One round of `n` participants; `drop_*` name who leaves before each stage.
fn round(
    n: u32,
    dim: usize,
    drop_before_shares: &[u32],
    drop_before_masked: &[u32],
    drop_before_unmask: &[u32],
) -> Outcome {
    let ids: Vec<u32> = (0..n).map(|i| 100 + i).collect();
    let params = RoundParams::new(3, &ids, [7; 32], dim, 1.0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let inputs: Vec<Vec<f32>> = ids
        .iter()
        .map(|_| {
            (0..dim)
                .map(|_| (rng.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32)
                .collect()
        })
        .collect();
    let mut server = Server::new(params.clone()).unwrap();
    let mut clients = Vec::new();
    for &id in &ids {
        let (client, keys) = Client::new(id, params.clone(), seed(id, 1)).unwrap();
        server.receive_keys(keys).unwrap();
        clients.push(client);
    }
    let alive = |id: &u32, gone: &[&[u32]]| gone.iter().all(|g| !g.contains(id));
    for (id, client) in ids.iter().zip(clients.iter_mut()) {
        if alive(id, &[drop_before_shares]) {
            let shares = client.share_keys(&server.keys_for(*id)).unwrap();
            server.receive_shares(shares).unwrap();
        }
    }
    let mut masked = Vec::new();
    for ((id, client), input) in ids.iter().zip(clients.iter_mut()).zip(&inputs) {
        if alive(id, &[drop_before_shares, drop_before_masked]) {
            let m = client.masked_input(&server.shares_for(*id), input).unwrap();
            masked.push(m.clone());
            server.receive_masked(m).unwrap();
        }
    }
    let request = server.unmask_request();
    for (id, client) in ids.iter().zip(clients.iter_mut()) {
        if alive(
            id,
            &[drop_before_shares, drop_before_masked, drop_before_unmask],
        ) {
            server
                .receive_unmask(client.unmask(&request).unwrap())
                .unwrap();
        }
    }
    let result = server.finish();
    Outcome {
        server,
        inputs,
        masked,
        survivors: request.survivors,
        result,
    }
}

#[test]
fn forty_seven_participants_thirty_percent_dropping_recover_the_exact_sum() {
    let n = 47;
    // 14 of 47 (30%) drop mid-round, after sharing keys and before sending
    // their masked input; one more never shares, one more never unmasks.
    let mid: Vec<u32> = (0..14).map(|i| 100 + 3 * i + 1).collect();
    let outcome = round(n, 2_000, &[145], &mid, &[146]);
    let (sum, count) = outcome.result.unwrap();
    assert_eq!(count, 47 - 14 - 1);
    let params = outcome.server.params().clone();
    assert_eq!((params.neighbours, params.threshold), (18, 7));
    // The recovered sum is exactly the sum of the survivors' quantised inputs...
    let survivors: BTreeSet<u32> = outcome.survivors.iter().copied().collect();
    let mut expected_q = vec![0u32; 2_000];
    let mut expected = vec![0f64; 2_000];
    for (i, input) in outcome.inputs.iter().enumerate() {
        if survivors.contains(&(100 + i as u32)) {
            for ((q, e), (&x, qx)) in expected_q
                .iter_mut()
                .zip(expected.iter_mut())
                .zip(input.iter().zip(quantize(input, &params)))
            {
                *q = q.wrapping_add(qx);
                *e += f64::from(x);
            }
        }
    }
    assert_eq!(sum, expected_q);
    // ...so the real sum is within the quantisation error of the plain sum.
    let recovered = tessera_secagg::dequantize_sum(&sum, count, &params);
    let bound = count as f64 * params.step() / 2.0 + 1e-9;
    let worst = recovered
        .iter()
        .zip(&expected)
        .map(|(r, e)| (r - e).abs())
        .fold(0.0, f64::max);
    assert!(worst <= bound, "error {worst} beyond {bound}");
    eprintln!(
        "{count} survivors: worst error {worst:.3e}, bound {bound:.3e} (step {:.3e}, {} bits)",
        params.step(),
        params.bits()
    );
}

#[test]
fn the_transcript_determines_only_the_sum() {
    let mid: Vec<u32> = (0..14).map(|i| 100 + 3 * i + 1).collect();
    let outcome = round(47, 512, &[], &mid, &[]);
    let (sum, _) = outcome.result.as_ref().unwrap();
    let params = outcome.server.params().clone();
    // The survivors stay connected on the neighbour graph: no strict subset
    // of them has masks that cancel within it.
    assert!(outcome.server.survivor_graph_is_connected());
    // Every masked input looks uniform: about half of all bits are set.
    for m in &outcome.masked {
        let ones: u32 = m.values.iter().map(|v| v.count_ones()).sum();
        let share = f64::from(ones) / (32.0 * m.values.len() as f64);
        assert!(
            (share - 0.5).abs() < 0.02,
            "participant {}: {share}",
            m.from
        );
    }
    // The server can sum any subset of masked inputs, but for a strict
    // subset the pairwise masks on the edges leaving it stay in: the partial
    // sum differs from the subset's quantised inputs on (almost) every value.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..200 {
        let subset: Vec<&MaskedInput> = outcome
            .masked
            .iter()
            .filter(|_| rng.next_u32() % 2 == 0)
            .collect();
        if subset.is_empty() || subset.len() == outcome.masked.len() {
            continue;
        }
        let mut masked_sum = vec![0u32; 512];
        let mut plain_sum = vec![0u32; 512];
        for m in &subset {
            let input = &outcome.inputs[(m.from - 100) as usize];
            for ((s, p), (v, q)) in masked_sum
                .iter_mut()
                .zip(plain_sum.iter_mut())
                .zip(m.values.iter().zip(quantize(input, &params)))
            {
                *s = s.wrapping_add(*v);
                *p = p.wrapping_add(q);
            }
        }
        let equal = masked_sum
            .iter()
            .zip(&plain_sum)
            .filter(|(a, b)| a == b)
            .count();
        assert!(equal <= 2, "{equal} of 512 values unmasked in a subset");
    }
    // The full set, with the revealed secrets, gives the sum.
    assert_eq!(sum.len(), 512);
}

#[test]
fn a_request_naming_someone_survivor_and_dropped_is_refused() {
    let ids: Vec<u32> = (0..10).collect();
    let params = RoundParams::new(1, &ids, [1; 32], 4, 1.0).unwrap();
    let mut server = Server::new(params.clone()).unwrap();
    let mut clients = Vec::new();
    for &id in &ids {
        let (c, k) = Client::new(id, params.clone(), seed(id, 2)).unwrap();
        server.receive_keys(k).unwrap();
        clients.push(c);
    }
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        server
            .receive_shares(c.share_keys(&server.keys_for(*id)).unwrap())
            .unwrap();
    }
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        let m = c.masked_input(&server.shares_for(*id), &[0.5; 4]).unwrap();
        server.receive_masked(m).unwrap();
    }
    let neighbour = clients[0].neighbours()[0];
    let greedy = UnmaskRequest {
        survivors: ids.clone(),
        dropped: vec![neighbour],
    };
    let e = clients[0].unmask(&greedy).unwrap_err();
    assert!(e.to_string().contains("both survivor and dropped"), "{e}");
    // A wrong-sized input and a stranger's message are refused, not panics.
    let bad = MaskedInput {
        from: 3,
        values: vec![0; 5],
    };
    assert!(server.receive_masked(bad).is_err());
    assert!(
        server
            .receive_keys(tessera_secagg::AdvertiseKeys {
                from: 99,
                c_public: [1; 32],
                s_public: [2; 32]
            })
            .is_err()
    );
}

#[test]
fn too_many_dropouts_fail_cleanly() {
    let ids: Vec<u32> = (0..8).collect();
    let mut params = RoundParams::new(1, &ids, [3; 32], 4, 1.0).unwrap();
    params.threshold = 4;
    assert_eq!(params.neighbours, 7, "a small cohort is a complete graph");
    let mut server = Server::new(params.clone()).unwrap();
    let mut clients = Vec::new();
    for &id in &ids {
        let (c, k) = Client::new(id, params.clone(), seed(id, 3)).unwrap();
        server.receive_keys(k).unwrap();
        clients.push(c);
    }
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        server
            .receive_shares(c.share_keys(&server.keys_for(*id)).unwrap())
            .unwrap();
    }
    // Five of eight drop before masking: no secret can be rebuilt.
    for (id, c) in ids.iter().zip(clients.iter_mut()).take(3) {
        let m = c.masked_input(&server.shares_for(*id), &[0.1; 4]).unwrap();
        server.receive_masked(m).unwrap();
    }
    let request = server.unmask_request();
    for c in clients.iter_mut().take(3) {
        server.receive_unmask(c.unmask(&request).unwrap()).unwrap();
    }
    assert!(matches!(
        server.finish(),
        Err(SecAggError::TooManyDropouts(_))
    ));
}

#[test]
fn keys_last_across_rounds_and_the_dropped_replace_their_mask_keys() {
    use tessera_secagg::KeyRing;
    let ids: Vec<u32> = (0..20).collect();
    let mut rings: Vec<Option<KeyRing>> = ids.iter().map(|_| None).collect();
    let mut previous_s: Vec<[u8; 32]> = vec![[0; 32]; ids.len()];
    for round in 1..=3u32 {
        let params = RoundParams::new(round, &ids, [4; 32], 64, 1.0).unwrap();
        let mut server = Server::new(params.clone()).unwrap();
        let mut clients = Vec::new();
        for &id in &ids {
            let keys = rings[id as usize]
                .take()
                .unwrap_or_else(|| KeyRing::new(seed(id, 10), seed(id, 11)));
            let (c, k) =
                Client::with_keys(id, params.clone(), keys, seed(id + 1000 * round, 12)).unwrap();
            if round == 2 {
                // Round 1 dropped participants 3 and 7: only their mask keys changed.
                assert_eq!(k.s_public != previous_s[id as usize], id == 3 || id == 7);
            }
            previous_s[id as usize] = k.s_public;
            server.receive_keys(k).unwrap();
            clients.push(c);
        }
        for (id, c) in ids.iter().zip(clients.iter_mut()) {
            server
                .receive_shares(c.share_keys(&server.keys_for(*id)).unwrap())
                .unwrap();
        }
        let dropped: &[u32] = if round == 1 { &[3, 7] } else { &[] };
        let mut expected = vec![0u32; 64];
        for (id, c) in ids.iter().zip(clients.iter_mut()) {
            if dropped.contains(id) {
                continue;
            }
            let input = vec![0.01 * *id as f32; 64];
            for (e, q) in expected.iter_mut().zip(quantize(&input, &params)) {
                *e = e.wrapping_add(q);
            }
            server
                .receive_masked(c.masked_input(&server.shares_for(*id), &input).unwrap())
                .unwrap();
        }
        let request = server.unmask_request();
        for (id, c) in ids.iter().zip(clients.iter_mut()) {
            if !dropped.contains(id) {
                server.receive_unmask(c.unmask(&request).unwrap()).unwrap();
            }
        }
        let (sum, count) = server.finish().unwrap();
        assert_eq!(count, 20 - dropped.len());
        assert_eq!(sum, expected, "round {round}");
        for (id, c) in ids.iter().zip(clients) {
            rings[*id as usize] = Some(c.into_keys(seed(id + 100 * round, 13)));
        }
    }
}

#[test]
fn the_threshold_follows_the_configured_dropout_tolerance() {
    use tessera_secagg::SecureAggregationConfig;
    let ids: Vec<u32> = (0..47).collect();
    let with = |tolerance: f64| SecureAggregationConfig {
        enabled: true,
        dropout_tolerance: Some(tolerance),
        ..SecureAggregationConfig::default()
    };
    let half = with(0.5).round_params(1, &ids, [0; 32], 8).unwrap();
    assert_eq!((half.neighbours, half.threshold), (18, 9));
    let most = with(0.9).round_params(1, &ids, [0; 32], 8).unwrap();
    assert_eq!(most.threshold, 2);
    assert!(with(1.0).round_params(1, &ids, [0; 32], 8).is_err());
    let both = SecureAggregationConfig {
        threshold: Some(5),
        ..with(0.5)
    };
    let e = both.round_params(1, &ids, [0; 32], 8).unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
}
