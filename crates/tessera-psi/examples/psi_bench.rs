//! Both parties of ECDH-PSI (mode both) and of intersection-sum in one
//! process on N x N identifiers with a known overlap of N / 2, rayon across
//! the machine's cores; prints seconds and bytes exchanged per element.
//!
//! ```text
//! cargo run --release -p tessera-psi --example psi_bench -- 100000
//! cargo run --release -p tessera-psi --example psi_bench -- 1000000 psi
//! cargo run --release -p tessera-psi --example psi_bench -- 100000 psi cardinality
//! ```
//!
//! Arguments: N (default 100000), what to run (`all`, `psi` or `sum`), and
//! the PSI mode (`both`, the default, `receiver-only` or `cardinality`).
//!
//! Bytes per element are the bytes of every message over N (each side holds
//! N elements). Identifier preparation (normalisation and HMAC) is timed
//! apart: sites do it once, before any run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;
use tessera_psi::*;

/// This process's CPU seconds so far (user + system, all threads), from
/// /proc/self/stat on Linux (clock ticks of 1/100 s); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn cpu_since(start: Option<f64>) -> String {
    match (start, cpu_seconds()) {
        (Some(a), Some(b)) => format!("{:.2} CPU s", b - a),
        _ => "CPU time unavailable".into(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(100_000, |a| {
        a.parse().expect("N: a number of identifiers per side")
    });
    let which = args.get(1).map_or("all", String::as_str);
    let mode = match args.get(2).map_or("both", String::as_str) {
        "both" => Mode::Both,
        "receiver-only" => Mode::ReceiverOnly,
        "cardinality" => Mode::Cardinality,
        other => panic!("mode {other}: expected both, receiver-only or cardinality"),
    };
    println!(
        "N = {n} per side, overlap {}, {} rayon threads, engine {}",
        n / 2,
        rayon::current_num_threads(),
        engine_name()
    );
    let key = MatchingKey::from_bytes([42; 32]);
    let t = Instant::now();
    let a_ids: Vec<String> = (0..n).map(|i| format!("PAT-{i:08}")).collect();
    let b_rows: Vec<(String, u64)> = (n / 2..n + n / 2)
        .map(|i| (format!("pat {i:08}"), (i as u64 * 7919) % 1001))
        .collect();
    let a = prepare(&key, &a_ids).unwrap();
    let b = prepare_with_values(&key, &b_rows, 1000).unwrap();
    println!(
        "identifier preparation (both sides): {:.2} s",
        t.elapsed().as_secs_f64()
    );

    if which == "all" || which == "psi" {
        let config = PsiConfig {
            max_elements: n.max(1),
            ..PsiConfig::new(mode)
        };
        let c = cpu_seconds();
        let t = Instant::now();
        let (r, q) = Receiver::start(config, &a.tokens).unwrap();
        let t1 = t.elapsed().as_secs_f64();
        let qb = q.to_bytes();
        let (s, resp) =
            Sender::respond(config, &b.tokens, &Query::from_bytes(&qb).unwrap()).unwrap();
        let t2 = t.elapsed().as_secs_f64();
        let rb = resp.to_bytes();
        let (out, reveal) = r.finish(&Response::from_bytes(&rb).unwrap()).unwrap();
        let t3 = t.elapsed().as_secs_f64();
        let vb = reveal.map(|r| r.to_bytes()).unwrap_or_default();
        let reveal = (!vb.is_empty()).then(|| Reveal::from_bytes(&vb).unwrap());
        let sout = s.finish(reveal.as_ref()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(out.size, n / 2);
        assert_eq!(sout.receiver_size, n);
        let bytes = qb.len() + rb.len() + vb.len();
        println!(
            "PSI (mode {mode}): {secs:.2} s wall, {} (query {t1:.2}, response {:.2}, finish {:.2}), {bytes} bytes = {:.2} bytes per element (query {:.2}, response {:.2}, reveal {:.3})",
            cpu_since(c),
            t2 - t1,
            t3 - t2,
            bytes as f64 / n as f64,
            qb.len() as f64 / n as f64,
            rb.len() as f64 / n as f64,
            vb.len() as f64 / n as f64,
        );
    }

    if which == "all" || which == "sum" {
        let config = SumConfig {
            max_elements: n.max(1),
            max_value: 1000,
            min_receiver_elements: 0,
        };
        let c = cpu_seconds();
        let t = Instant::now();
        let (r, q) = SumReceiver::start(config, &a.tokens).unwrap();
        let m1 = q.to_bytes();
        let (s, resp) = SumSender::respond(
            config,
            &b.tokens,
            &b.values,
            &SumQuery::from_bytes(&m1).unwrap(),
        )
        .unwrap();
        let m2 = resp.to_bytes();
        let (w, req) = r.combine(&SumResponse::from_bytes(&m2).unwrap()).unwrap();
        let m3 = req.to_bytes();
        let share = s
            .decrypt(&DecryptRequest::from_bytes(&m3).unwrap())
            .unwrap();
        let m4 = share.to_bytes();
        let out = w.finish(&DecryptShare::from_bytes(&m4).unwrap()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let want: u64 = (n / 2..n).map(|i| (i as u64 * 7919) % 1001).sum();
        assert_eq!((out.intersection_size, out.sum), (n / 2, want));
        let bytes = m1.len() + m2.len() + m3.len() + m4.len();
        println!(
            "intersection-sum: {secs:.2} s wall, {}, count {}, sum {}, mean {:.3}, {bytes} bytes = {:.2} bytes per element",
            cpu_since(c),
            out.intersection_size,
            out.sum,
            out.mean().unwrap_or(f64::NAN),
            bytes as f64 / n as f64
        );
    }
}
