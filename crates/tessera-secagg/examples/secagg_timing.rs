//! Times each stage of SecAgg+ rounds (fresh mask keys every round, signed
//! keys, the consistency check):
//! `cargo run --release -p tessera-secagg --example secagg_timing -- 47 30 3`
//! (participants, dimension, rounds; a third of the participants drop in the first round).

use std::time::{Duration, Instant};

use tessera_secagg::{
    Client, Ed25519Directory, Ed25519Signer, KeyRing, RoundParams, SecAggError, Server,
};

fn seed(id: u32, tag: u8) -> [u8; 32] {
    let mut s = [tag; 32];
    s[..4].copy_from_slice(&id.to_le_bytes());
    s
}

fn main() -> Result<(), SecAggError> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(47) as u32;
    let dim = args.get(1).copied().unwrap_or(610);
    let rounds = args.get(2).copied().unwrap_or(3) as u32;
    let ids: Vec<u32> = (0..n).collect();
    let mut rings: Vec<Option<KeyRing>> = ids.iter().map(|_| None).collect();
    let signers: Vec<Ed25519Signer> = ids
        .iter()
        .map(|&id| Ed25519Signer::from_secret(seed(id, 9)))
        .collect();
    let mut directory = Ed25519Directory::new();
    for (&id, s) in ids.iter().zip(&signers) {
        directory.insert(id, s.public())?;
    }
    for round in 1..=rounds {
        let dropped = if round == 1 { n / 3 } else { 0 } as usize;
        let params = RoundParams::new(round, &ids, [5; 32], dim, 1.0)?;
        let mut marks = vec![Instant::now()];
        let mut server = Server::new(params.clone())?;
        let mut clients = Vec::new();
        for &id in &ids {
            let ring = rings[id as usize]
                .take()
                .unwrap_or_else(|| KeyRing::new(seed(id, 1), seed(id, 2)));
            let (c, k) = Client::with_keys(
                id,
                params.clone(),
                ring,
                seed(id + 1000 * round, 3),
                &signers[id as usize],
            )?;
            server.receive_keys(k)?;
            clients.push(c);
        }
        marks.push(Instant::now());
        for (id, c) in ids.iter().zip(clients.iter_mut()) {
            server.receive_shares(c.share_keys(&server.keys_for(*id), &directory)?)?;
        }
        marks.push(Instant::now());
        let input = vec![0.25f32; dim];
        for (id, c) in ids.iter().zip(clients.iter_mut()).skip(dropped) {
            let m = c.masked_input(&server.shares_for(*id), &input)?;
            server.receive_masked(m)?;
        }
        marks.push(Instant::now());
        let request = server.unmask_request();
        for (id, c) in ids.iter().zip(clients.iter_mut()).skip(dropped) {
            server.receive_view(c.sign_view(&request, &signers[*id as usize])?)?;
        }
        marks.push(Instant::now());
        let views = server.views();
        for c in clients.iter_mut().skip(dropped) {
            server.receive_unmask(c.unmask(&request, &views, &directory)?)?;
        }
        marks.push(Instant::now());
        let (_sum, count) = server.finish()?;
        marks.push(Instant::now());
        for (id, c) in ids.iter().zip(clients) {
            rings[*id as usize] = Some(c.into_keys(seed(id + 100 * round, 4)));
        }
        let d: Vec<Duration> = marks.windows(2).map(|w| w[1] - w[0]).collect();
        println!(
            "round {round}: n {n} dim {dim} k {} t {}: keys {:?}, shares {:?}, masked {:?}, consistency {:?}, unmask {:?}, finish {:?}; {count} survivors",
            params.neighbours, params.threshold, d[0], d[1], d[2], d[3], d[4], d[5]
        );
    }
    Ok(())
}
