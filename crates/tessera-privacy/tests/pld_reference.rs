//! The PLD accountant against Google's `dp_accounting` (values in
//! `reference/pld_reference.csv` and `reference/pld_mixed_reference.csv`,
//! made by `reference/make_pld_reference.py`), and against the RDP
//! accountant.

use std::time::Instant;

use tessera_privacy::{DpEvent, PldAccountant, RdpAccountant};

fn relative(got: f64, expected: f64) -> f64 {
    if expected == 0.0 {
        got.abs()
    } else {
        ((got - expected) / expected).abs()
    }
}

#[test]
fn pld_accountant_equals_dp_accounting_to_one_in_a_thousand() {
    let table = include_str!("reference/pld_reference.csv");
    let start = Instant::now();
    let mut checked = 0;
    let mut worst = (0.0f64, String::new());
    // Rows come in pairs of deltas: one accountant (its distribution built
    // once, then cached) serves both.
    let mut accountant = PldAccountant::new();
    let mut current = None;
    for (i, line) in table.lines().enumerate().skip(1) {
        let cols: Vec<f64> = line
            .split(',')
            .map(|c| {
                c.parse()
                    .unwrap_or_else(|_| panic!("line {}: {line}", i + 1))
            })
            .collect();
        let [q, sigma, steps, delta, expected] = cols[..] else {
            panic!("line {}: {line}", i + 1)
        };
        let event = DpEvent {
            sampling_rate: q,
            noise_multiplier: sigma,
            steps: steps as u64,
        };
        if current != Some(event) {
            accountant = PldAccountant::new();
            accountant.compose(&event).expect("valid event");
            current = Some(event);
        }
        let got = accountant.epsilon(delta);
        let rel = relative(got, expected);
        if rel >= worst.0 {
            worst = (
                rel,
                format!(
                    "q={q} sigma={sigma} steps={steps} delta={delta}: {got} against {expected} \
                     (interval {})",
                    accountant.value_discretization_interval()
                ),
            );
        }
        assert!(
            rel <= 1e-3,
            "q={q} sigma={sigma} steps={steps} delta={delta}: epsilon {got}, reference {expected}"
        );
        checked += 1;
    }
    assert_eq!(checked, 128);
    println!(
        "{checked} reference values in {:.1?}, worst relative difference {:e} at {}",
        start.elapsed(),
        worst.0,
        worst.1
    );
}

#[test]
fn heterogeneous_compositions_equal_dp_accounting() {
    let table = include_str!("reference/pld_mixed_reference.csv");
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for (i, line) in table.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let [events, delta, expected] = cols[..] else {
            panic!("line {}: {line}", i + 1)
        };
        let number = |s: &str| -> f64 {
            s.parse()
                .unwrap_or_else(|_| panic!("line {}: {line}", i + 1))
        };
        let mut accountant = PldAccountant::new();
        for event in events.split(';') {
            let parts: Vec<&str> = event.split(':').collect();
            let [q, sigma, steps] = parts[..] else {
                panic!("line {}: {line}", i + 1)
            };
            accountant
                .compose(&DpEvent {
                    sampling_rate: number(q),
                    noise_multiplier: number(sigma),
                    steps: number(steps) as u64,
                })
                .expect("valid event");
        }
        let (delta, expected) = (number(delta), number(expected));
        let got = accountant.epsilon(delta);
        let rel = relative(got, expected);
        worst = worst.max(rel);
        assert!(
            rel <= 1e-3,
            "{events} delta={delta}: epsilon {got}, reference {expected}"
        );
        checked += 1;
    }
    assert_eq!(checked, 10);
    println!("{checked} heterogeneous compositions, worst relative difference {worst:e}");
}

#[test]
fn pld_is_no_looser_than_rdp() {
    let mut checked = 0;
    for q in [0.01, 0.2, 1.0] {
        for sigma in [0.8, 2.0, 5.79] {
            for steps in [1, 50] {
                for delta in [1e-5, 1e-7] {
                    let event = DpEvent {
                        sampling_rate: q,
                        noise_multiplier: sigma,
                        steps,
                    };
                    let mut pld = PldAccountant::new();
                    pld.compose(&event).expect("valid");
                    let mut rdp = RdpAccountant::new();
                    rdp.compose(&event).expect("valid");
                    let (p, r) = (pld.epsilon(delta), rdp.epsilon(delta));
                    assert!(
                        p <= r * (1.0 + 1e-3) + 1e-3,
                        "q={q} sigma={sigma} steps={steps} delta={delta}: PLD {p} > RDP {r}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn fifteen_unsampled_rounds_at_sigma_5_79() {
    let event = DpEvent {
        sampling_rate: 1.0,
        noise_multiplier: 5.79,
        steps: 15,
    };
    let start = Instant::now();
    let mut pld = PldAccountant::new();
    pld.compose(&event).expect("valid");
    let p = pld.epsilon(1e-5);
    let took = start.elapsed();
    let mut rdp = RdpAccountant::new();
    rdp.compose(&event).expect("valid");
    let r = rdp.epsilon(1e-5);
    println!("q=1 sigma=5.79 15 steps delta=1e-5: PLD {p:.4} ({took:.1?}), RDP {r:.4}");
    // dp_accounting 0.6.0: PLDAccountant (as in reference/pld_reference.csv)
    // and RdpAccountant.
    let (pld_reference, rdp_reference) = (2.7638546216450135, 2.9960307717976233);
    assert!(
        relative(p, pld_reference) <= 1e-3,
        "PLD {p} against {pld_reference}"
    );
    assert!(
        relative(r, rdp_reference) <= 1e-6,
        "RDP {r} against {rdp_reference}"
    );
    assert!(p < r - 0.2);
}
