//! The accountant against Google's `dp_accounting` (values in
//! `reference/rdp_reference.csv`, made by `reference/make_rdp_reference.py`).

use tessera_privacy::{DpEvent, RdpAccountant};

#[test]
fn accountant_equals_dp_accounting_to_one_in_a_million() {
    let table = include_str!("reference/rdp_reference.csv");
    let mut checked = 0;
    let mut worst: f64 = 0.0;
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
        let mut accountant = RdpAccountant::new();
        accountant
            .compose(&DpEvent {
                sampling_rate: q,
                noise_multiplier: sigma,
                steps: steps as u64,
            })
            .expect("valid event");
        let got = accountant.epsilon(delta);
        let rel = if expected == 0.0 {
            got.abs()
        } else {
            ((got - expected) / expected).abs()
        };
        worst = worst.max(rel);
        assert!(
            rel <= 1e-6,
            "q={q} sigma={sigma} steps={steps} delta={delta}: epsilon {got}, reference {expected}"
        );
        checked += 1;
    }
    assert_eq!(checked, 450);
    println!("{checked} reference values, worst relative difference {worst:e}");
}
