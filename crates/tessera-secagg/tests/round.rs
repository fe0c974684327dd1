//! Secure aggregation rounds with dropouts at every stage, against the plain
//! sum computed independently, and what the server's transcript reveals.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use std::sync::OnceLock;

use tessera_secagg::{
    Client, Ed25519Directory, Ed25519Signer, MaskedInput, RoundParams, SecAggError, Server,
    UnmaskRequest, quantize,
};

/// Participant `id`'s identity key.
fn signer(id: u32) -> Ed25519Signer {
    Ed25519Signer::from_secret(seed(id, 77))
}

/// Every test participant's public identity key.
fn directory() -> &'static Ed25519Directory {
    static DIRECTORY: OnceLock<Ed25519Directory> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let mut d = Ed25519Directory::new();
        for id in 0..200 {
            d.insert(id, signer(id).public()).unwrap();
        }
        d
    })
}

/// Stages 4 and 5 for the clients `answering` (by position in `clients`):
/// each signs the server's view, then unmasks with the signatures.
fn consistency_and_unmask(server: &mut Server, clients: &mut [(u32, &mut Client)]) {
    let request = server.unmask_request();
    for (id, c) in clients.iter_mut() {
        server
            .receive_view(c.sign_view(&request, &signer(*id)).unwrap())
            .unwrap();
    }
    let views = server.views();
    for (_, c) in clients.iter_mut() {
        server
            .receive_unmask(c.unmask(&request, &views, directory()).unwrap())
            .unwrap();
    }
}

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
        let (client, keys) = Client::new(id, params.clone(), seed(id, 1), &signer(id)).unwrap();
        server.receive_keys(keys).unwrap();
        clients.push(client);
    }
    let alive = |id: &u32, gone: &[&[u32]]| gone.iter().all(|g| !g.contains(id));
    for (id, client) in ids.iter().zip(clients.iter_mut()) {
        if alive(id, &[drop_before_shares]) {
            let shares = client
                .share_keys(&server.keys_for(*id), directory())
                .unwrap();
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
    let mut answering: Vec<(u32, &mut Client)> = ids
        .iter()
        .copied()
        .zip(clients.iter_mut())
        .filter(|(id, _)| {
            alive(
                id,
                &[drop_before_shares, drop_before_masked, drop_before_unmask],
            )
        })
        .collect();
    consistency_and_unmask(&mut server, &mut answering);
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
    assert_eq!((params.neighbours, params.threshold), (46, 24));
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
        let (c, k) = Client::new(id, params.clone(), seed(id, 2), &signer(id)).unwrap();
        server.receive_keys(k).unwrap();
        clients.push(c);
    }
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        server
            .receive_shares(c.share_keys(&server.keys_for(*id), directory()).unwrap())
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
    let e = clients[0].sign_view(&greedy, &signer(0)).unwrap_err();
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
                s_public: [2; 32],
                signature: Vec::new(),
            })
            .is_err()
    );
}

#[test]
fn too_many_dropouts_fail_cleanly() {
    let ids: Vec<u32> = (0..8).collect();
    let params = RoundParams::new(1, &ids, [3; 32], 4, 1.0).unwrap();
    assert_eq!(params.neighbours, 7, "a small cohort is a complete graph");
    assert_eq!(params.threshold, 4, "more than half of 7");
    let mut server = Server::new(params.clone()).unwrap();
    let mut clients = Vec::new();
    for &id in &ids {
        let (c, k) = Client::new(id, params.clone(), seed(id, 3), &signer(id)).unwrap();
        server.receive_keys(k).unwrap();
        clients.push(c);
    }
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        server
            .receive_shares(c.share_keys(&server.keys_for(*id), directory()).unwrap())
            .unwrap();
    }
    // Five of eight drop before masking: no secret can be rebuilt.
    for (id, c) in ids.iter().zip(clients.iter_mut()).take(3) {
        let m = c.masked_input(&server.shares_for(*id), &[0.1; 4]).unwrap();
        server.receive_masked(m).unwrap();
    }
    // Three survivors are fewer than the threshold: nobody signs the view.
    let request = server.unmask_request();
    for (id, c) in ids.iter().zip(clients.iter_mut()).take(3) {
        let e = c.sign_view(&request, &signer(*id)).unwrap_err();
        assert!(e.to_string().contains("fewer than the threshold"), "{e}");
    }
    assert!(matches!(
        server.finish(),
        Err(SecAggError::TooManyDropouts(_))
    ));
}

#[test]
fn the_encryption_key_lasts_and_the_mask_key_is_fresh_every_round() {
    use tessera_secagg::KeyRing;
    let ids: Vec<u32> = (0..20).collect();
    let mut rings: Vec<Option<KeyRing>> = ids.iter().map(|_| None).collect();
    let mut previous: Vec<([u8; 32], [u8; 32])> = vec![([0; 32], [0; 32]); ids.len()];
    for round in 1..=3u32 {
        let params = RoundParams::new(round, &ids, [4; 32], 64, 1.0).unwrap();
        let mut server = Server::new(params.clone()).unwrap();
        let mut clients = Vec::new();
        for &id in &ids {
            let keys = rings[id as usize]
                .take()
                .unwrap_or_else(|| KeyRing::new(seed(id, 10), seed(id, 11)));
            let (c, k) = Client::with_keys(
                id,
                params.clone(),
                keys,
                seed(id + 1000 * round, 12),
                &signer(id),
            )
            .unwrap();
            if round > 1 {
                // Survivor or dropped, every mask key is new; the encryption key stays.
                assert_ne!(k.s_public, previous[id as usize].1, "round {round}, {id}");
                assert_eq!(k.c_public, previous[id as usize].0, "round {round}, {id}");
            }
            previous[id as usize] = (k.c_public, k.s_public);
            server.receive_keys(k).unwrap();
            clients.push(c);
        }
        for (id, c) in ids.iter().zip(clients.iter_mut()) {
            server
                .receive_shares(c.share_keys(&server.keys_for(*id), directory()).unwrap())
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
        let mut answering: Vec<(u32, &mut Client)> = ids
            .iter()
            .copied()
            .zip(clients.iter_mut())
            .filter(|(id, _)| !dropped.contains(id))
            .collect();
        consistency_and_unmask(&mut server, &mut answering);
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
    let third = with(0.3).round_params(1, &ids, [0; 32], 8).unwrap();
    // 46 x 0.7 = 32.2: 33 of 46 shares rebuild a secret.
    assert_eq!((third.neighbours, third.threshold), (46, 33));
    // A tolerance just under a half still keeps 2t > k.
    let most = with(0.49).round_params(1, &ids, [0; 32], 8).unwrap();
    assert_eq!(most.threshold, 24);
    for refused in [0.5, 0.9, 1.0] {
        let e = with(refused).round_params(1, &ids, [0; 32], 8).unwrap_err();
        assert!(e.to_string().contains("[0, 0.5)"), "{e}");
    }
    // An explicit threshold at or under half the neighbours is refused.
    let low = SecureAggregationConfig {
        enabled: true,
        threshold: Some(23),
        ..SecureAggregationConfig::default()
    };
    let e = low.round_params(1, &ids, [0; 32], 8).unwrap_err();
    assert!(
        e.to_string().contains("more than half the 46 neighbours"),
        "{e}"
    );
    let both = SecureAggregationConfig {
        threshold: Some(12),
        ..with(0.3)
    };
    let e = both.round_params(1, &ids, [0; 32], 8).unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
}

#[test]
fn a_participant_refuses_round_parameters_that_differ_from_the_plan() {
    use tessera_secagg::{Expected, SecureAggregationConfig};
    let config = SecureAggregationConfig {
        enabled: true,
        ..SecureAggregationConfig::default()
    };
    let ids: Vec<u32> = (0..47).collect();
    let honest = config.round_params(4, &ids, [8; 32], 100).unwrap();
    let expected = Expected {
        config: &config,
        round: 4,
        id: 12,
        graph_seed: [8; 32],
        dimension: 100,
        min_cohort: 10,
    };
    honest.check(&expected).unwrap();
    let refused = |params: RoundParams, expected: &Expected<'_>, what: &str| {
        let e = params.check(expected).unwrap_err().to_string();
        assert!(
            e.contains("differ from the plan") && e.contains(what),
            "{what}: {e}"
        );
    };
    // A lowered threshold, even one that still passes 2t > k elsewhere.
    refused(
        RoundParams {
            threshold: honest.threshold - 1,
            ..honest.clone()
        },
        &expected,
        "threshold 23, the plan gives 24",
    );
    refused(
        RoundParams {
            neighbours: 10,
            threshold: 6,
            ..honest.clone()
        },
        &expected,
        "neighbours 10, the plan gives 46",
    );
    refused(
        RoundParams {
            graph_seed: [9; 32],
            ..honest.clone()
        },
        &expected,
        "graph's seed",
    );
    refused(
        RoundParams {
            dimension: 99,
            ..honest.clone()
        },
        &expected,
        "dimension 99",
    );
    refused(
        RoundParams {
            range: 4.0,
            ..honest.clone()
        },
        &expected,
        "clipping range 4",
    );
    refused(
        RoundParams {
            round: 5,
            ..honest.clone()
        },
        &expected,
        "round 5",
    );
    // A cohort shrunk to a handful (the plan needs 10), or one without us.
    let small = config
        .round_params(4, &[12, 30, 31, 40], [8; 32], 100)
        .unwrap();
    refused(
        small,
        &expected,
        "a cohort of 4, the plan needs at least 10",
    );
    let without = config
        .round_params(4, &(13..47).collect::<Vec<_>>(), [8; 32], 100)
        .unwrap();
    refused(without, &expected, "id 12 is not in the cohort");
    let unsorted = RoundParams {
        participants: ids.iter().rev().copied().collect(),
        ..honest
    };
    refused(unsorted, &expected, "sorted");
}

#[test]
fn the_neighbour_count_keeps_every_secret_recoverable_at_the_planned_dropout() {
    // Complete graphs for tens of sites at 30% dropout; sparse graphs for
    // large cohorts or lower dropout. Each keeps 2t > k.
    for (n, dropout, k) in [
        (4, 0.3, 3),
        (47, 0.3, 46),
        (47, 0.1, 36),
        (1_000, 0.1, 42),
        (1_000, 0.3, 240),
        (100_000, 0.3, 254),
    ] {
        assert_eq!(
            RoundParams::default_neighbours(n, dropout).unwrap(),
            k,
            "n {n}, {dropout}"
        );
    }
    assert!(RoundParams::default_neighbours(47, 0.5).is_err());
    // Checked empirically: 2,000 random draws of a 47-site cohort losing 30%
    // at random never leave anyone with fewer than t surviving neighbours.
    let ids: Vec<u32> = (0..47).collect();
    let params = RoundParams::new(1, &ids, [2; 32], 4, 1.0).unwrap();
    let graph = params.graph();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..2_000 {
        let dropped: BTreeSet<u32> = ids
            .iter()
            .copied()
            .filter(|_| rng.next_u32() % 10 < 3)
            .collect();
        for (p, neighbours) in &graph {
            let alive = neighbours.iter().filter(|v| !dropped.contains(v)).count();
            if alive < params.threshold {
                // Only possible when more than half the cohort dropped.
                assert!(
                    dropped.len() > 23 - usize::from(!dropped.contains(p)),
                    "{p}"
                );
            }
        }
    }
}
