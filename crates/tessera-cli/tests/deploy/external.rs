//! Deployment with external learners: a real `tessera coordinator` process
//! and participants driven in-process through
//! `tessera_participant::run_external`, each with a deterministic learner
//! of its own (logistic regression on fixed rows, written here, outside
//! Tessera's models). The deployed run gives the model
//! `tessera_sim::simulate_with_learners` gives for the same plan and
//! learners, bit for bit, also through a coordinator killed with SIGKILL
//! mid-round and restarted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{ParameterSet, Tensor};
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, Metrics,
    Plan,
};
use tessera_participant::{ExternalSite, ParticipantConfig, run_external};

use crate::LIMIT;
use crate::util::procs::{coordinator, wait_until};
use crate::util::status::poll;
use crate::util::{self, Scratch};

const FEATURES: usize = 4;
const SITES: [&str; 3] = ["alpha", "beta", "gamma"];

/// Logistic regression by mini-batch gradient descent on rows of its own,
/// with the strategy's term (`proximal_mu * (w - global) + correction`);
/// `pause` slows each fit down (a slow site keeps rounds open).
struct Logistic {
    /// Each site's model starts elsewhere: the federation's from the first
    /// site's by name.
    start: f32,
    train: (Vec<[f32; FEATURES]>, Vec<f32>),
    test: (Vec<[f32; FEATURES]>, Vec<f32>),
    pause: Duration,
}

/// Rows from a small linear congruential generator: the same everywhere.
fn rows(seed: u64, n: usize) -> (Vec<[f32; FEATURES]>, Vec<f32>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let truth = [1.5f32, -2.0, 0.5, 1.0];
    let shift = seed as f32 * 0.1;
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for _ in 0..n {
        let x = [next() + shift, next(), next(), next()];
        let score: f32 = x.iter().zip(truth).map(|(a, b)| a * b).sum::<f32>() + 0.3 * next();
        xs.push(x);
        ys.push(if score > 0.0 { 1.0 } else { 0.0 });
    }
    (xs, ys)
}

impl Logistic {
    fn new(site: usize, pause: Duration) -> Self {
        Self {
            start: 0.1 * (site + 1) as f32,
            train: rows(site as u64 * 2 + 1, 30 + 7 * site),
            test: rows(site as u64 * 2 + 2, 12),
            pause,
        }
    }

    fn declared(&self) -> (u64, u64) {
        (self.train.0.len() as u64, self.test.0.len() as u64)
    }

    fn weights(p: &ParameterSet) -> (Vec<f32>, f32) {
        let values: Vec<f32> = p.values().collect();
        (values[..FEATURES].to_vec(), values[FEATURES])
    }

    fn set(w: &[f32], b: f32) -> ParameterSet {
        let mut set = ParameterSet::new();
        set.push("w", Tensor::new(vec![FEATURES, 1], w.to_vec()).unwrap())
            .unwrap();
        set.push("b", Tensor::new(vec![1], vec![b]).unwrap())
            .unwrap();
        set
    }

    fn predict(w: &[f32], b: f32, x: &[f32; FEATURES]) -> f32 {
        let z: f32 = x.iter().zip(w).map(|(a, c)| a * c).sum::<f32>() + b;
        1.0 / (1.0 + (-z).exp())
    }
}

impl ExternalLearner for Logistic {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        Ok(Self::set(&[self.start, -0.1, 0.05, 0.0], -self.start))
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        std::thread::sleep(self.pause);
        let (g_w, g_b) = Self::weights(global);
        let (mut w, mut b) = (g_w.clone(), g_b);
        let correction = config.correction.as_ref().map(Self::weights);
        let (xs, ys) = &self.train;
        let batch = config.batch_size.max(1);
        let mut steps = 0u64;
        let mut loss = 0.0f64;
        for _ in 0..config.epochs.unwrap_or(1) {
            for (bx, by) in xs.chunks(batch).zip(ys.chunks(batch)) {
                let mut gw = [0.0f32; FEATURES];
                let mut gb = 0.0f32;
                for (x, y) in bx.iter().zip(by) {
                    let p = Self::predict(&w, b, x);
                    loss += -f64::from(if *y > 0.5 {
                        p.max(1e-7).ln()
                    } else {
                        (1.0 - p).max(1e-7).ln()
                    });
                    for k in 0..FEATURES {
                        gw[k] += (p - y) * x[k] / bx.len() as f32;
                    }
                    gb += (p - y) / bx.len() as f32;
                }
                for k in 0..FEATURES {
                    let mut g = gw[k] + config.proximal_mu * (w[k] - g_w[k]);
                    if let Some((cw, _)) = &correction {
                        g += cw[k];
                    }
                    w[k] -= config.lr * g;
                }
                let mut g = gb + config.proximal_mu * (b - g_b);
                if let Some((_, cb)) = &correction {
                    g += cb;
                }
                b -= config.lr * g;
                steps += 1;
            }
        }
        let seen = (xs.len() as u64 * config.epochs.unwrap_or(1)) as f64;
        Ok(FitResult {
            parameters: Self::set(&w, b),
            n_examples: xs.len() as i64,
            metrics: Metrics::from([
                ("n_steps".to_string(), steps as f64),
                ("loss".to_string(), loss / seen),
            ]),
        })
    }

    fn evaluate(
        &mut self,
        global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        let (w, b) = Self::weights(global);
        let (xs, ys) = &self.test;
        let mut loss = 0.0f64;
        let mut right = 0u32;
        for (x, y) in xs.iter().zip(ys) {
            let p = Self::predict(&w, b, x);
            loss += -f64::from(if *y > 0.5 {
                p.max(1e-7).ln()
            } else {
                (1.0 - p).max(1e-7).ln()
            });
            right += u32::from((p > 0.5) == (*y > 0.5));
        }
        Ok(EvaluateResult {
            loss: loss / xs.len() as f64,
            n_examples: xs.len() as i64,
            metrics: Metrics::from([("n_correct".to_string(), f64::from(right))]),
        })
    }
}

/// The plan: an external model, `strategy`, `extra` at the end.
fn plan_text(strategy: &str, extra: &str) -> String {
    format!(
        "name = \"external\"\nseed = 5\n\n[model]\nkind = \"external\"\n\n\
         [training]\nlr = 0.2\nbatch_size = 8\nepochs = 2\n\n\
         [federation]\nrounds = 4\nstrategy = \"{strategy}\"\nmin_participants = 3\nquorum = 3\n\n\
         [privacy]\nsite_metrics = \"clear\"\n{extra}"
    )
}

fn learners(slow: Duration) -> Vec<(String, Box<dyn ExternalLearner>)> {
    SITES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let pause = if i == 2 { slow } else { Duration::ZERO };
            (
                name.to_string(),
                Box::new(Logistic::new(i, pause)) as Box<dyn ExternalLearner>,
            )
        })
        .collect()
}

/// The simulated run's final parameters, as bits.
fn simulated(plan: &Plan) -> Vec<u32> {
    let report = tessera_sim::simulate_with_learners(
        plan,
        learners(Duration::ZERO),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    report.final_parameters.values().map(f32::to_bits).collect()
}

/// Every site's participant in-process against `url`, each on a thread
/// with its own runtime, until the run ends; the final model each took
/// home, as bits. `lost` acknowledgements may not reach a site: an update
/// the coordinator stored just before it was killed counts in the resumed
/// round without the site hearing it was accepted.
fn deploy(url: &str, plan: &Plan, slow: Duration, lost: u32) -> Vec<Vec<u32>> {
    let threads: Vec<_> = learners(slow)
        .into_iter()
        .enumerate()
        .map(|(i, (site, learner))| {
            let (train_rows, test_rows) = Logistic::new(i, Duration::ZERO).declared();
            let config = ParticipantConfig {
                coordinator: url.to_string(),
                standbys: Vec::new(),
                site,
                data: None,
                mapping: None,
                plan_dir: ".".into(),
                max_backoff: Duration::from_millis(500),
                give_up_after: Duration::from_secs(60),
                pause_before_update: Duration::ZERO,
                tls: None,
                tls_domain: None,
                expect_plan: Some(plan.clone()),
                share_levels: false,
                max_memory_bytes: None,
                joins: Default::default(),
                ledger: None,
                local_state: None,
                continual: None,
                importance_out: false,
                rollout: Default::default(),
            };
            let site = ExternalSite {
                learner,
                train_rows,
                test_rows,
            };
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime.block_on(run_external(config, site))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| {
            let (summary, results) = thread.join().unwrap().unwrap();
            assert!(
                summary.updates_accepted + lost >= plan.federation.rounds,
                "{summary:?}"
            );
            let (_, model): (u32, Arc<ParameterSet>) = results.unwrap().model.unwrap();
            model.values().map(f32::to_bits).collect()
        })
        .collect()
}

/// The final model in the coordinator's database, as bits.
fn stored(db: &Path) -> Vec<u32> {
    use tessera_coordinator::RunStore;
    let store = tessera_coordinator::SqliteStore::open_existing(db).unwrap();
    let run = store.runs().unwrap().remove(0).id;
    let last = store.latest_model_version(&run).unwrap().unwrap();
    let model = store.model(&run, last).unwrap().unwrap();
    model.values().map(f32::to_bits).collect()
}

#[test]
fn external_learners_deployed_equal_their_simulation_bit_for_bit() {
    if util::skip_e2e("external_learners_deployed_equal_their_simulation_bit_for_bit") {
        return;
    }
    let s = Scratch::new("deploy-external");
    for (strategy, extra) in [
        ("fedavg", ""),
        ("fedprox", "\n[strategies.fedprox]\nmu = 0.5\n"),
        ("scaffold", ""),
        ("fedadam", "\n[robust]\nrule = \"median\"\n"),
        ("fedavg", "\n[secure_aggregation]\nenabled = true\n"),
        (
            "fedavg",
            "\n[compression]\nupload = \"topk:0.5+q8\"\nerror_feedback = true\n",
        ),
    ] {
        let text = plan_text(strategy, extra);
        let plan = Plan::from_toml(&text, "external").unwrap();
        let path = s.write(&format!("{strategy}-{}.toml", extra.len()), &text);
        let db = s.path(&format!("{strategy}-{}.sqlite", extra.len()));
        let expected = simulated(&plan);
        let (mut coordinator, url) = coordinator(&s.dir, &path, &db, 0, &["--report", "dep.json"]);
        let models = deploy(&url, &plan, Duration::ZERO, 0);
        assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
        for model in &models {
            assert_eq!(
                model, &expected,
                "{strategy} {extra}: deployment differs from simulation"
            );
        }
        assert_eq!(
            stored(&db),
            expected,
            "{strategy} {extra}: the coordinator's model"
        );
        let report = s.json("dep.json");
        assert_eq!(report["model"], "external");
        assert_eq!(report["rounds"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn external_learners_survive_a_coordinator_killed_mid_round() {
    if util::skip_e2e("external_learners_survive_a_coordinator_killed_mid_round") {
        return;
    }
    let s = Scratch::new("deploy-external-kill");
    let text = plan_text("scaffold", "");
    let plan = Plan::from_toml(&text, "external").unwrap();
    let path = s.write("plan.toml", &text);
    let db = s.path("c.sqlite");
    let expected = simulated(&plan);
    let (mut first, url) = coordinator(&s.dir, &path, &db, 0, &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    // gamma is slow: round 2 sits open with two updates accepted when the
    // coordinator is killed.
    let deployed = {
        let (url, plan) = (url.clone(), plan.clone());
        std::thread::spawn(move || deploy(&url, &plan, Duration::from_millis(1500), 1))
    };
    wait_until(LIMIT, "round 2 with two accepted updates", || {
        poll(&db, |s| s.pending_updates_of(2)) == 2
    });
    first.kill_9();
    let (mut second, _) = coordinator(&s.dir, &path, &db, port, &[]);
    let models = deployed.join().unwrap();
    assert!(second.wait(LIMIT).success(), "{}", second.log());
    assert!(second.log().contains("resumed"), "{}", second.log());
    for model in &models {
        assert_eq!(model, &expected, "nothing lost, nothing doubled");
    }
    assert_eq!(stored(&db), expected);
}

#[test]
fn a_learner_and_a_data_file_each_meet_the_other_plan_with_its_name() {
    if util::skip_e2e("a_learner_and_a_data_file_each_meet_the_other_plan_with_its_name") {
        return;
    }
    let s = Scratch::new("deploy-external-wrong-plan");
    // An external learner joining a run of a built-in model stops (exit 17).
    let heart = crate::plan(&s, "fedavg", "");
    let (_built_in, url) = coordinator(&s.dir, &heart, &s.path("heart.sqlite"), 0, &[]);
    let config = ParticipantConfig {
        coordinator: url,
        standbys: Vec::new(),
        site: "cleveland".into(),
        data: None,
        mapping: None,
        plan_dir: ".".into(),
        max_backoff: Duration::from_millis(500),
        give_up_after: Duration::from_secs(30),
        pause_before_update: Duration::ZERO,
        tls: None,
        tls_domain: None,
        expect_plan: None,
        share_levels: false,
        max_memory_bytes: None,
        joins: Default::default(),
        ledger: None,
        local_state: None,
        continual: None,
        importance_out: false,
        rollout: Default::default(),
    };
    let site = ExternalSite {
        learner: Box::new(Logistic::new(0, Duration::ZERO)),
        train_rows: 30,
        test_rows: 12,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let e = runtime.block_on(run_external(config, site)).unwrap_err();
    assert_eq!(e.exit_code(), 17, "{e}");
    assert!(e.to_string().contains("built-in model"), "{e}");
    // A participant with a data file joining a run of an external model
    // stops too, saying how such a site joins.
    let path = s.write("external.toml", &plan_text("fedavg", ""));
    let (_external, url) = coordinator(&s.dir, &path, &s.path("external.sqlite"), 0, &[]);
    let mut data = crate::util::procs::participant(&s.dir, &url, "cleveland", &[]);
    assert_eq!(data.wait(LIMIT).code(), Some(17), "{}", data.log());
    assert!(data.log().contains("run_external"), "{}", data.log());
}
