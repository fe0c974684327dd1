//! `[data.cross_silo]` end to end in simulation: the feature is what the
//! sites' rows say (exactly without noise, within the calibrated noise
//! with it), the identifier never becomes a feature, every answering site
//! is charged and a budget refuses the feature, and on data where
//! readmission depends on visits at other hospitals the model with the DP
//! feature beats the model without it over several seeds.
//!
//! The rows are generated here (`visits_csv`); `examples/cross-silo-visits.toml`
//! reads the same rows from `data/cross-silo-visits/`, and
//! `the_example_data_is_the_generators` keeps the two equal
//! (`TESSERA_WRITE_EXAMPLE=1` rewrites the files).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_data::{DataError, FederatedData, InMemory};
use tessera_engine::Plan;
use tessera_sim::{CrossSiloReport, SimOptions, load_data, simulate};

const HOSPITALS: [&str; 3] = ["hospital_a", "hospital_b", "hospital_c"];

/// SplitMix64: a tiny seeded generator, so the rows need no dependency.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn binomial(&mut self, n: u32, p: f64) -> u32 {
        (0..n).filter(|_| self.uniform() < p).count() as u32
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Three hospitals' visit rows (`patient_id,age,num_medications,
/// length_of_stay,readmitted`). Each patient has a home hospital (one to
/// three visits there) and a frailty that drives visits to the other two;
/// readmission depends mostly on the visits *elsewhere*, which no hospital
/// sees in its own rows, and weakly on age and medications.
fn visits_csv(patients: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut out: Vec<String> = HOSPITALS
        .iter()
        .map(|_| "patient_id,age,num_medications,length_of_stay,readmitted\n".to_string())
        .collect();
    for p in 0..patients {
        let frailty = rng.normal();
        let home = (rng.u64() % 3) as usize;
        let age = (58.0 + 12.0 * rng.normal() + 3.0 * frailty)
            .clamp(18.0, 95.0)
            .round();
        let visits: Vec<u32> = (0..3)
            .map(|h| {
                if h == home {
                    1 + rng.binomial(2, 0.3)
                } else {
                    rng.binomial(3, sigmoid(1.4 * frailty - 1.2))
                }
            })
            .collect();
        for h in 0..3 {
            let elsewhere: u32 = (0..3).filter(|&o| o != h).map(|o| visits[o]).sum();
            for _ in 0..visits[h] {
                let meds = (9.0 + 3.0 * rng.normal()).round().max(0.0);
                let stay = (1.0 + 0.5 * rng.normal()).exp().round().max(1.0);
                let logit = -1.2
                    + 0.9 * f64::from(elsewhere.min(4))
                    + 0.02 * (age - 58.0)
                    + 0.05 * (meds - 9.0);
                let readmitted = if rng.uniform() < sigmoid(logit) {
                    "yes"
                } else {
                    "no"
                };
                out[h].push_str(&format!("MRN-{p:05},{age},{meds},{stay},{readmitted}\n"));
            }
        }
    }
    out
}

const PATIENTS: usize = 3000;
const DATA_SEED: u64 = 19;

fn plan_text(cross_silo: Option<&str>) -> String {
    let mut text = String::from(
        r#"
name = "cross-silo-visits"
seed = 1

[data.schema]
target = "readmitted"
positive = ["yes"]
columns = [{ name = "patient_id", type = "ignore" }]

[model]
kind = "logistic"

[training]
steps = 50
batch_size = 32
optimizer = "sgd"
lr = 0.1

[federation]
rounds = 20
"#,
    );
    for h in HOSPITALS {
        text.push_str(&format!(
            "\n[[data.sites]]\nname = \"{h}\"\npath = \"{h}.csv\"\n"
        ));
    }
    if let Some(extra) = cross_silo {
        text.push_str("\n[data.cross_silo]\nidentifier = \"patient_id\"\n");
        text.push_str(extra);
    }
    text
}

fn source(patients: usize) -> InMemory {
    InMemory::new(
        HOSPITALS
            .iter()
            .zip(visits_csv(patients, DATA_SEED))
            .map(|(h, csv)| (PathBuf::from(format!("/mem/{h}.csv")), csv)),
    )
}

fn load(
    text: &str,
    patients: usize,
) -> Result<(Plan, FederatedData, Option<CrossSiloReport>), DataError> {
    let plan = Plan::from_toml(text, "test plan").unwrap();
    let (data, report) = load_data(&plan, Path::new("/mem"), &source(patients))?;
    Ok((plan, data, report))
}

/// The refusal of a plan that should not load.
fn refused(text: &str, patients: usize, why: &str) -> DataError {
    match load(text, patients) {
        Ok(_) => panic!("loaded, though {why}"),
        Err(e) => e,
    }
}

/// The exact feature of every row: visits at the other hospitals, each
/// counted up to `cap`, from the generated rows themselves.
fn exact(patients: usize, cap: u32) -> Vec<Vec<f64>> {
    let csvs = visits_csv(patients, DATA_SEED);
    let per: Vec<BTreeMap<String, u32>> = csvs
        .iter()
        .map(|csv| {
            let mut m = BTreeMap::new();
            for line in csv.lines().skip(1) {
                *m.entry(line.split(',').next().unwrap().to_string())
                    .or_default() += 1;
            }
            m
        })
        .collect();
    csvs.iter()
        .enumerate()
        .map(|(h, csv)| {
            csv.lines()
                .skip(1)
                .map(|line| {
                    let id = line.split(',').next().unwrap();
                    (0..3)
                        .filter(|&o| o != h)
                        .map(|o| f64::from(per[o].get(id).copied().unwrap_or(0).min(cap)))
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// Every site's feature values (raw, train then test rows), to compare as
/// multisets with the exact ones.
fn feature_values(data: &FederatedData) -> Vec<Vec<f64>> {
    let col = data.feature_names.len() - 1;
    data.sites
        .iter()
        .map(|s| {
            let mut v: Vec<f64> = s
                .raw_train()
                .column(col)
                .iter()
                .chain(s.raw_test().column(col).iter())
                .map(|x| f64::from(*x))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect()
}

#[test]
fn with_next_to_no_noise_the_feature_is_the_visit_count_elsewhere() {
    // epsilon 1e6: sigma is about 1e-5, far below the rounding to integers.
    let (_, data, report) = load(&plan_text(Some("epsilon = 1e6\nmax_visits = 3\n")), 400).unwrap();
    let report = report.unwrap();
    // (The calibration's floor is 0.01: a row's noise sd is about 0.04.)
    assert!(
        report.feature_noise < 0.06,
        "noise {}",
        report.feature_noise
    );
    assert_eq!(data.feature_names.last().unwrap(), "visits_elsewhere");
    assert!(!data.feature_names.iter().any(|f| f.contains("patient")));
    let mut want = exact(400, 3);
    for w in &mut want {
        w.sort_by(f64::total_cmp);
    }
    let got: Vec<Vec<f64>> = feature_values(&data)
        .into_iter()
        .map(|v| v.into_iter().map(f64::round).collect())
        .collect();
    assert_eq!(got, want);
    // max_visits = 1 counts hospitals, not visits.
    let (_, data, _) = load(&plan_text(Some("epsilon = 1e6\n")), 400).unwrap();
    let mut want = exact(400, 1);
    for w in &mut want {
        w.sort_by(f64::total_cmp);
    }
    let got: Vec<Vec<f64>> = feature_values(&data)
        .into_iter()
        .map(|v| v.into_iter().map(f64::round).collect())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_noise_matches_the_charge_and_every_answering_site_pays() {
    let (plan, data, report) = load(
        &plan_text(Some("epsilon = 2.0\ndelta = 1e-5\nmax_visits = 2\n")),
        PATIENTS,
    )
    .unwrap();
    let report = report.unwrap();
    // Each site answers two others: two Gaussian releases at multiplier z
    // spend the plan's epsilon (calibrated to 0.1%).
    let event = tessera_privacy::DpEvent {
        sampling_rate: 1.0,
        noise_multiplier: report.noise_multiplier,
        steps: 2,
    };
    let spent = tessera_privacy::epsilon_with(plan.privacy.accountant, &event, 1e-5).unwrap();
    assert!(spent <= 2.0 && spent > 1.99, "spent {spent}");
    assert!((report.sigma - report.noise_multiplier * 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(report.ledger.len(), 3);
    for (entry, h) in report.ledger.iter().zip(HOSPITALS) {
        assert_eq!(entry.kind, "cross_silo");
        assert_eq!(entry.participant.as_deref(), Some(h));
        assert_eq!(entry.event, event);
    }
    assert!(!report.release);
    // The residuals (feature minus the exact count) have the reported sd.
    let want = exact(PATIENTS, 2);
    let got = feature_values(&data);
    let mut residuals = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        let mut w = w.clone();
        w.sort_by(f64::total_cmp);
        // Compare moments: the mean is unbiased and the variance adds.
        let n = w.len() as f64;
        let mean_w = w.iter().sum::<f64>() / n;
        let mean_g = g.iter().sum::<f64>() / n;
        residuals.push(mean_g - mean_w);
        let var_w = w.iter().map(|x| (x - mean_w).powi(2)).sum::<f64>() / n;
        let var_g = g.iter().map(|x| (x - mean_g).powi(2)).sum::<f64>() / n;
        let noise = report.feature_noise.powi(2);
        assert!(
            ((var_g - var_w) / noise - 1.0).abs() < 0.1,
            "variance {var_g} against {var_w} + {noise}"
        );
        assert!(
            (mean_g - mean_w).abs() < 4.0 * report.feature_noise / n.sqrt(),
            "mean {mean_g} against {mean_w}"
        );
    }
}

#[test]
fn a_participant_budget_refuses_the_feature_before_it_runs() {
    let mut text = plan_text(Some("epsilon = 2.0\n"));
    text.push_str("\n[privacy.participant_budgets]\nhospital_b = 1.5\n");
    let err = refused(&text, 200, "over hospital_b's budget");
    let msg = err.to_string();
    assert!(msg.contains("hospital_b") && msg.contains("1.5"), "{msg}");
    // Central DP whose rounds fill the run's budget leaves no room either.
    let mut text = plan_text(Some("epsilon = 1.0\n"));
    text.push_str("\n[privacy]\nmode = \"central\"\nepsilon = 3.0\nbudget = 3.0\n");
    let err = refused(&text, 200, "over the run's budget");
    assert!(err.to_string().contains("budget"), "{err}");
}

#[test]
fn plain_loading_and_bad_settings_are_refused() {
    let plan = Plan::from_toml(&plan_text(Some("epsilon = 1.0\n")), "test plan").unwrap();
    let err = tessera_data::load(&plan.data, Path::new("/mem"), &source(50)).unwrap_err();
    assert!(err.to_string().contains("cross_silo"), "{err}");
    // Settings are checked with the plan.
    for (extra, word) in [
        ("epsilon = 0.0\n", "epsilon"),
        ("epsilon = 1.0\ndelta = 1.0\n", "delta"),
        ("epsilon = 1.0\nmax_visits = 0\n", "max_visits"),
        ("epsilon = 1.0\nfeature = \"readmitted\"\n", "readmitted"),
    ] {
        let err = Plan::from_toml(&plan_text(Some(extra)), "test plan").expect_err(extra);
        assert!(err.to_string().contains(word), "{extra}: {err}");
    }
    // A feature named like a column of the files is refused when read.
    let age = plan_text(Some("epsilon = 1.0\nfeature = \"age\"\n"));
    let err = refused(&age, 50, "age is a column");
    assert!(err.to_string().contains("'age'"), "{err}");
}

fn auc(report: &tessera_engine::report::RunReport) -> f64 {
    report.final_metrics.auc.unwrap()
}

/// The claim of the example: the model with the DP feature beats the
/// model without it, on every seed (the seed changes the noise, the
/// initial model and the batches; the rows and their split stay).
#[test]
fn the_dp_feature_beats_training_without_it() {
    let (plan, data, _) = load(&plan_text(None), PATIENTS).unwrap();
    let (dp_plan, dp_data, report) = load(&plan_text(Some("epsilon = 8.0\n")), PATIENTS).unwrap();
    println!(
        "noise sd on the feature {:.3}",
        report.unwrap().feature_noise
    );
    for seed in [1u64, 2, 3] {
        let mut plain = plan.clone();
        plain.seed = seed;
        let without = simulate(&plain, &data, &SimOptions::default(), &mut |_| {}).unwrap();
        let mut with = dp_plan.clone();
        with.seed = seed;
        // The noise depends on the seed: load again under it.
        let (with_data, _) = if seed == dp_plan.seed {
            (dp_data.clone(), None)
        } else {
            load_data(&with, Path::new("/mem"), &source(PATIENTS)).unwrap()
        };
        let dp = simulate(&with, &with_data, &SimOptions::default(), &mut |_| {}).unwrap();
        println!(
            "seed {seed}: AUC without {:.4}, with the DP feature {:.4}; accuracy {:.4} / {:.4}",
            auc(&without),
            auc(&dp),
            without.final_metrics.accuracy.unwrap(),
            dp.final_metrics.accuracy.unwrap()
        );
        assert!(auc(&dp) > auc(&without) + 0.03, "seed {seed}");
    }
}

/// The numbers of BENCHMARKS.md: test AUC without the feature and with it
/// at several epsilons, on three seeds. `cargo test -p tessera-sim --test
/// cross_silo -- --ignored --nocapture benefit_table`
#[test]
#[ignore]
fn benefit_table() {
    let cap: u32 = std::env::var("MAX_VISITS").map_or(1, |v| v.parse().unwrap());
    let (plan, data, _) = load(&plan_text(None), PATIENTS).unwrap();
    for seed in [1u64, 2, 3] {
        let mut plain = plan.clone();
        plain.seed = seed;
        let without = simulate(&plain, &data, &SimOptions::default(), &mut |_| {}).unwrap();
        print!("seed {seed}: without {:.4}", auc(&without));
        for eps in ["1.0", "2.0", "4.0", "8.0", "1e6"] {
            let (mut with, _, _) = load(
                &plan_text(Some(&format!("epsilon = {eps}\nmax_visits = {cap}\n"))),
                50,
            )
            .unwrap();
            with.seed = seed;
            let (d, r) = load_data(&with, Path::new("/mem"), &source(PATIENTS)).unwrap();
            let dp = simulate(&with, &d, &SimOptions::default(), &mut |_| {}).unwrap();
            print!(
                " | eps {eps} (sd {:.2}) {:.4}",
                r.unwrap().feature_noise,
                auc(&dp)
            );
        }
        println!();
    }
}

#[test]
fn the_example_data_is_the_generators() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cross-silo-visits");
    let csvs = visits_csv(PATIENTS, DATA_SEED);
    if std::env::var_os("TESSERA_WRITE_EXAMPLE").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (h, csv) in HOSPITALS.iter().zip(&csvs) {
            std::fs::write(dir.join(format!("{h}.csv")), csv).unwrap();
        }
    }
    for (h, csv) in HOSPITALS.iter().zip(&csvs) {
        let file = std::fs::read_to_string(dir.join(format!("{h}.csv"))).unwrap();
        assert!(file == *csv, "{h}.csv differs from the generator's rows");
    }
    // And the example plan reads them, with the feature.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let plan = Plan::from_file(&examples.join("cross-silo-visits.toml")).unwrap();
    let (data, report) = load_data(&plan, &examples, &tessera_data::Filesystem).unwrap();
    assert!(report.is_some());
    assert_eq!(data.feature_names.last().unwrap(), "visits_elsewhere");
}
