//! Times each stage of a SecAgg+ round: `cargo run --release -p tessera-secagg --example secagg_timing -- 47 610`.

use std::time::Instant;

use tessera_secagg::{Client, RoundParams, SecAggError, Server};

fn main() -> Result<(), SecAggError> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(47) as u32;
    let dim = args.get(1).copied().unwrap_or(610);
    let ids: Vec<u32> = (0..n).collect();
    let params = RoundParams::new(1, &ids, [5; 32], dim, 1.0)?;
    let t = Instant::now();
    let mut server = Server::new(params.clone())?;
    let mut clients = Vec::new();
    for &id in &ids {
        let mut seed = [9u8; 32];
        seed[..4].copy_from_slice(&id.to_le_bytes());
        let (c, k) = Client::new(id, params.clone(), seed)?;
        server.receive_keys(k)?;
        clients.push(c);
    }
    let t1 = t.elapsed();
    for (id, c) in ids.iter().zip(clients.iter_mut()) {
        server.receive_shares(c.share_keys(&server.keys_for(*id))?)?;
    }
    let t2 = t.elapsed();
    let input = vec![0.25f32; dim];
    for (id, c) in ids.iter().zip(clients.iter_mut()).skip((n / 3) as usize) {
        let m = c.masked_input(&server.shares_for(*id), &input)?;
        server.receive_masked(m)?;
    }
    let t3 = t.elapsed();
    let request = server.unmask_request();
    for c in clients.iter().skip((n / 3) as usize) {
        server.receive_unmask(c.unmask(&request)?)?;
    }
    let t4 = t.elapsed();
    let (_sum, count) = server.finish()?;
    let t5 = t.elapsed();
    println!(
        "n {n} dim {dim} k {} t {}: keys {:?}, shares {:?}, masked {:?}, unmask {:?}, finish {:?}; {count} survivors",
        params.neighbours,
        params.threshold,
        t1,
        t2 - t1,
        t3 - t2,
        t4 - t3,
        t5 - t4
    );
    Ok(())
}
