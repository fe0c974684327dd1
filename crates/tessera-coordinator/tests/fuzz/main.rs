//! Fuzz harness for the coordinator's message handlers: random sequences of
//! calls into a [`Federation`] on the bundled heart plan (and variants of it:
//! clear site metrics, asynchronous rounds, SCAFFOLD, federation-scope
//! standardisation, secure aggregation, central DP, compression), in a
//! temporary SQLite file.
//!
//! Four honest participants (the heart sites, with the offers their real data
//! gives) take the protocol's next step when the sequence says so, so that
//! rounds open and close; between their steps come hostile calls: joins with
//! other names, versions and capabilities, offers of kinds, levels and
//! statistics that lie, updates with extreme counts, NaN losses and NaN or
//! huge values, evaluations that do not add up, heartbeats, withdrawals and
//! secure-aggregation steps for any round, time-driven `advance`, and
//! restarts of the coordinator from its database. What the gRPC layer checks
//! before calling the federation (site names of at most 128 bytes, an
//! update's layout being the model's, a withdrawal's reason of at most 1000
//! bytes) holds here too. Each case asserts only that nothing panics and that
//! the federation reopens from its database.
//!
//! cargo-fuzz needs a nightly toolchain, so this is proptest-driven. By
//! default it runs 500 sequences (a few seconds in a debug build); run
//! longer with `PROPTEST_CASES` (about 200 sequences a second in a debug
//! build), e.g. for about three minutes:
//!
//! ```text
//! PROPTEST_CASES=40000 cargo test -p tessera-coordinator --test fuzz
//! ```
//!
//! One test binary: the tests, the plan variants and the honest sites are
//! here; the calls and the driver that runs them are in the modules below.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;
mod ops;

use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;
use tessera_data::{Filesystem, agree_kinds, agree_vocabulary, read_local_sites};
use tessera_engine::Plan;
use tessera_proto::convert;
use tessera_proto::pb;

use driver::check;
use ops::{Op, op};

/// Cases when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 500;

/// proptest's default configuration (which reads `PROPTEST_CASES`), with
/// fewer cases than its 256 when the variable is not set.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The plan variants: the heart plan's text with settings changed.
static PLANS: LazyLock<Vec<(Plan, String)>> = LazyLock::new(|| {
    let heart = std::fs::read_to_string(examples().join("fed-heart-disease.toml")).unwrap();
    // The heart plan with `replace`ments, and `extra` tables at its end.
    let variant = |replace: &[(&str, &str)], extra: &str| {
        let mut text = heart.clone();
        for (from, to) in replace {
            assert!(text.contains(from), "{from}");
            text = text.replace(from, to);
        }
        text.push_str(extra);
        let plan = Plan::from_toml(&text, "fuzz").unwrap();
        (plan, text)
    };
    let clear = "\n[privacy]\nsite_metrics = \"clear\"\n";
    let federation = |settings: &'static str| ("[federation]\n", settings);
    vec![
        variant(&[], ""),
        variant(&[], clear),
        variant(&[("rounds = 15", "rounds = 3")], clear),
        variant(
            &[federation(
                "[federation]\nmode = \"async\"\nbuffer_size = 2\nmax_staleness = 3\n",
            )],
            clear,
        ),
        variant(
            &[federation(
                "[federation]\nquorum = 3\ndeadline_seconds = 0.05\n",
            )],
            clear,
        ),
        variant(
            &[("strategy = \"fedavg\"", "strategy = \"scaffold\"")],
            clear,
        ),
        variant(
            &[(
                "[data.standardize]\n",
                "[data.standardize]\nscope = \"federation\"\n",
            )],
            clear,
        ),
        variant(&[], "\n[secure_aggregation]\nenabled = true\n"),
        variant(
            &[],
            "\n[privacy]\nmode = \"central\"\nepsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\
             site_metrics = \"clear\"\n",
        ),
        variant(
            &[],
            &format!("{clear}\n[compression]\nupload = \"topk:0.5+q8\"\ndownload = \"q8\"\n"),
        ),
        variant(
            &[],
            &format!("{clear}\n[robust]\nrule = \"median\"\nnorm_bound = 10.0\n"),
        ),
    ]
});

/// An honest site: its name and the offers its real rows give.
struct Honest {
    name: String,
    kinds: pb::KindsOffer,
    levels: pb::LevelsOffer,
}

struct Sites {
    sites: Vec<Honest>,
    features: usize,
}

static SITES: LazyLock<Sites> = LazyLock::new(|| {
    let plan = &PLANS[0].0;
    let mut local = read_local_sites(&plan.data, &examples(), &Filesystem).unwrap();
    let kinds_offers: Vec<_> = local.iter().map(|s| s.kinds_offer()).collect();
    let kinds = agree_kinds(&plan.data, &kinds_offers).unwrap();
    let levels: Vec<_> = local
        .iter_mut()
        .map(|s| s.levels_offer(&plan.data, &kinds).unwrap())
        .collect();
    let agreement = agree_vocabulary(&plan.data, &kinds, &levels).unwrap();
    let sites = kinds_offers
        .iter()
        .zip(&levels)
        .map(|(k, l)| Honest {
            name: k.site.clone(),
            kinds: convert::kinds_offer_to_pb(k),
            levels: convert::levels_offer_to_pb(l),
        })
        .collect();
    Sites {
        sites,
        features: agreement.feature_names().len(),
    }
});

fn liveness() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => Just(Duration::from_secs(3600)),
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_millis(1)),
    ]
}

/// Every variant opens, and on the variants whose rounds need no secure
/// aggregation, honest sites alone finish rounds.
#[test]
fn honest_sites_finish_rounds() {
    for (k, (plan, _)) in PLANS.iter().enumerate() {
        let ops: Vec<Op> = (0..400).map(|i| Op::Honest(i % 4)).collect();
        let rounds = check(k, Duration::from_secs(3600), &ops).rounds.len();
        let secure = plan.secure_aggregation.enabled
            || plan.privacy.site_metrics == tessera_privacy::SiteMetrics::AggregateOnly;
        if !secure {
            assert!(rounds >= 2, "variant {k}: {rounds} rounds");
        }
    }
}

/// A case that runs this long is taken for a hang: its input is printed and
/// the process aborts (proptest cannot stop a case that never returns).
const HANG: Duration = Duration::from_secs(60);

/// The case running now, when it began and its input.
static RUNNING: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Watches the running case until it returns.
struct Watch;

impl Watch {
    fn start(input: String) -> Watch {
        static WATCHDOG: Once = Once::new();
        WATCHDOG.call_once(|| {
            std::thread::spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((began, input)) = running.as_ref()
                        && began.elapsed() > HANG
                    {
                        eprintln!("a case has run for more than {HANG:?}: {input}");
                        std::process::abort();
                    }
                }
            });
        });
        *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), input));
        Watch
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

proptest! {
    #![proptest_config(config())]

    /// Random sequences of honest and hostile calls.
    #[test]
    fn random_calls(
        plan in 0..PLANS.len(),
        liveness in liveness(),
        warm_up in prop_oneof![1 => Just(0usize), 3 => 12usize..80],
        ops in prop::collection::vec(op(), 1..120),
    ) {
        // Mostly, the honest sites first agree and train a while.
        let ops: Vec<Op> = (0..warm_up).map(|i| Op::Honest(i % 4)).chain(ops).collect();
        let _watch = Watch::start(format!("plan {plan}, liveness {liveness:?}, ops {ops:?}"));
        check(plan, liveness, &ops);
    }
}
