//! `run_participant`: a Python client joins a deployed federation through
//! the Rust participant (`tessera_participant::run_external`), with its TLS,
//! heartbeats, reconnection, secure aggregation and compression. The call
//! blocks, with the GIL released, until the run is over; each call into the
//! client takes the GIL.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;
use tessera_engine::Plan;
use tessera_participant::{ExternalSite, ParticipantConfig};

use crate::{PyLearner, TesseraError, to_python};

/// A global model for Python: its round and its parameters.
type Model<'py> = (u32, Bound<'py, PyList>);

/// Seconds as a duration, refused when not a number above 0.
fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(TesseraError::new_err(format!(
            "{what} = {value}: give a number of seconds above 0"
        )))
    }
}

/// What `run_participant` returns (see there).
type Joined<'py> = (String, u32, Option<Model<'py>>, usize, Option<(f64, f64)>);

/// Joins the federation at `coordinator` as `site` with the client behind
/// `bridge`, which trains on `train_rows` rows and evaluates on `test_rows`
/// (declared to the coordinator: they bound every count the client
/// reports). `tls` is the site's certificate folder (`tessera ca issue
/// --site`; `None`: plain text, local experiments only), `expect_plan` the
/// plan the site agreed to, as TOML text with its name for messages,
/// `ledger` the site's own privacy ledger file (`None`: in memory).
/// Returns the run id, the updates accepted, the final global model's
/// round and parameters (`None` when the run ended before one was
/// evaluated), the trainings the site ran and, under local DP, the epsilon
/// its own ledger counts and its delta. A refusal raises `TesseraError` naming its cause, with the
/// exit code `tessera participant` would have given as its second argument.
#[pyfunction]
#[pyo3(signature = (
    bridge, coordinator, site, train_rows, test_rows,
    tls=None, tls_domain=None, expect_plan=None, give_up_after=300.0, ledger=None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_participant<'py>(
    py: Python<'py>,
    bridge: Py<PyAny>,
    coordinator: &str,
    site: &str,
    train_rows: u64,
    test_rows: u64,
    tls: Option<PathBuf>,
    tls_domain: Option<String>,
    expect_plan: Option<(String, String)>,
    give_up_after: f64,
    ledger: Option<PathBuf>,
) -> PyResult<Joined<'py>> {
    let expect_plan = match expect_plan {
        Some((text, origin)) => Some(
            Plan::from_toml(&text, &origin).map_err(|e| TesseraError::new_err(e.to_string()))?,
        ),
        None => None,
    };
    if let Some(dir) = &tls
        && !dir.is_dir()
    {
        return Err(TesseraError::new_err(format!(
            "tls = {}: not a folder (give the site's folder from `tessera ca issue --site`)",
            dir.display()
        )));
    }
    let config = ParticipantConfig {
        coordinator: coordinator.to_string(),
        standbys: Vec::new(),
        site: site.to_string(),
        data: None,
        mapping: None,
        plan_dir: PathBuf::from("."),
        max_backoff: Duration::from_secs(2),
        give_up_after: seconds("give_up_after", give_up_after)?,
        pause_before_update: Duration::ZERO,
        tls: tls.as_deref().map(tessera_tls::TlsFiles::in_dir),
        tls_domain,
        expect_plan,
        share_levels: false,
        max_memory_bytes: None,
        joins: Default::default(),
        ledger,
        local_state: None,
        continual: None,
        importance_out: false,
        rollout: Default::default(),
    };
    let external = ExternalSite {
        learner: Box::new(PyLearner { bridge }),
        train_rows,
        test_rows,
    };
    let ended = py.detach(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (format!("cannot start the async runtime: {e}"), 1u8))?;
        runtime
            .block_on(tessera_participant::run_external(config, external))
            .map_err(|e| (e.to_string(), e.exit_code()))
    });
    let (summary, results) =
        ended.map_err(|(message, code)| TesseraError::new_err((message, code)))?;
    let Some(results) = results else {
        return Ok((String::new(), summary.updates_accepted, None, 0, None));
    };
    let model = match &results.model {
        Some((round, parameters)) => Some((*round, to_python(py, parameters)?)),
        None => None,
    };
    Ok((
        results.run_id,
        summary.updates_accepted,
        model,
        results.trainings,
        results.local_epsilon,
    ))
}
