//! The native half of Tessera's Python package (`tessera._tessera`, built by
//! maturin from `python/pyproject.toml`): a Python client as a
//! [`tessera_engine::ExternalLearner`], and `simulate`, which runs the Rust
//! simulator (`tessera_sim::simulate_with_learners`) over Python clients and
//! returns the run's report as JSON.
//!
//! The pure-Python half (`python/tessera/`) holds the `Client` base class
//! and a bridge around each client that gives this crate plain values only:
//! parameters as `(shape, little-endian f32 bytes)` pairs, example counts as
//! `int`, metrics as `dict[str, float]`. Whatever a client returns is
//! checked by the engine (`tessera_engine::external`), not here; this crate
//! only refuses what is not of those shapes.
//!
//! `run_participant` joins a deployed federation with one client through
//! the Rust participant (`participant.rs`).
//!
//! Threads: the simulator trains sites on its own threads with the GIL
//! released; each call into a client takes the GIL, so Python clients run
//! one at a time (their own native code, numpy or torch kernels, may release
//! the GIL and overlap).
#![deny(missing_docs)]

use std::collections::BTreeMap;

use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use tessera_core::{ParameterSet, Tensor};
use tessera_engine::{
    EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult, Metrics,
    Plan,
};

mod participant;

create_exception!(
    _tessera,
    TesseraError,
    PyRuntimeError,
    "A run Tessera refused or could not finish; the message says why."
);

/// One Python client behind its bridge (`tessera._bridge.Bridge`).
struct PyLearner {
    bridge: Py<PyAny>,
}

/// The name of parameter `i` (the i-th array a client returns).
fn name(i: usize) -> String {
    format!("parameters[{i}]")
}

/// Parameters as the bridge takes them: a list of `(shape, bytes)`.
fn to_python<'py>(py: Python<'py>, parameters: &ParameterSet) -> PyResult<Bound<'py, PyList>> {
    let items = parameters
        .tensors()
        .iter()
        .map(|t| {
            let bytes: Vec<u8> = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            PyTuple::new(
                py,
                [
                    PyTuple::new(py, t.shape())?.into_any(),
                    PyBytes::new(py, &bytes).into_any(),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// Parameters from the bridge's list of `(shape, bytes)`.
fn from_python(call: &'static str, list: &Bound<'_, PyAny>) -> Result<ParameterSet, ExternalError> {
    let shape_error = |what: &str| ExternalError::refused(call, what.to_string());
    let items: Vec<(Vec<usize>, Bound<'_, PyBytes>)> = list
        .extract()
        .map_err(|_| shape_error("parameters that are not a list of arrays"))?;
    let mut parameters = ParameterSet::new();
    for (i, (shape, bytes)) in items.into_iter().enumerate() {
        let bytes = bytes.as_bytes();
        if bytes.len() % 4 != 0 {
            return Err(shape_error("an array whose bytes are not float32 values"));
        }
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let tensor = Tensor::new(shape, values)
            .map_err(|e| ExternalError::refused(call, format!("{}: {e}", name(i))))?;
        parameters
            .push(name(i), tensor)
            .map_err(|e| ExternalError::refused(call, e.to_string()))?;
    }
    Ok(parameters)
}

/// A metrics dict (the bridge made every value a float).
fn metrics(call: &'static str, dict: &Bound<'_, PyAny>) -> Result<Metrics, ExternalError> {
    dict.extract::<Metrics>()
        .map_err(|_| ExternalError::refused(call, "metrics that are not a dict of numbers"))
}

/// An example count (the bridge made it an int).
fn count(call: &'static str, n: &Bound<'_, PyAny>) -> Result<i64, ExternalError> {
    n.extract::<i64>().map_err(|_| {
        ExternalError::refused(
            call,
            format!("n_examples = {n}, not an integer a site could have"),
        )
    })
}

/// What a client's exception becomes: a refusal when the bridge refused
/// what the client returned, else the client's failure.
fn learner_error(py: Python<'_>, call: &'static str, error: PyErr) -> ExternalError {
    let message = error
        .value(py)
        .str()
        .map_or_else(|_| "an exception".to_string(), |s| s.to_string());
    let refused = py
        .import("tessera._bridge")
        .and_then(|m| m.getattr("Refused"))
        .is_ok_and(|refused| error.get_type(py).is(&refused));
    if refused {
        ExternalError::refused(call, message)
    } else {
        ExternalError::failed(call, message)
    }
}

/// The fit config as a dict, tensors as `(shape, bytes)` lists.
fn fit_config<'py>(py: Python<'py>, config: &FitConfig) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("round", config.round)?;
    dict.set_item("strategy", config.strategy)?;
    dict.set_item("proximal_mu", config.proximal_mu)?;
    dict.set_item("lr", config.lr)?;
    dict.set_item("batch_size", config.batch_size)?;
    dict.set_item("local_epochs", config.epochs)?;
    dict.set_item("local_steps", config.steps)?;
    match &config.correction {
        Some(c) => dict.set_item("correction", to_python(py, c)?)?,
        None => dict.set_item("correction", py.None())?,
    }
    // Local DP: the DP-SGD the client must run, as the site accounts it.
    if let Some(dp) = &config.dp {
        dict.set_item("dp_noise_multiplier", dp.noise_multiplier)?;
        dict.set_item("dp_clip_norm", dp.clip_norm)?;
        dict.set_item("dp_sampling_rate", dp.sampling_rate)?;
        dict.set_item("dp_max_steps", dp.max_steps)?;
        dict.set_item("dp_seed", dp.seed)?;
    }
    Ok(dict)
}

impl PyLearner {
    /// Calls `method` on the bridge with the GIL held and reads its result.
    fn call<T>(
        &self,
        call: &'static str,
        args: impl FnOnce(Python<'_>) -> PyResult<Vec<Bound<'_, PyAny>>>,
        read: impl FnOnce(&Bound<'_, PyAny>) -> Result<T, ExternalError>,
    ) -> Result<T, ExternalError> {
        Python::attach(|py| {
            let args = args(py)
                .map_err(|e| ExternalError::failed(call, format!("cannot pass arguments: {e}")))?;
            let args = PyTuple::new(py, args)
                .map_err(|e| ExternalError::failed(call, format!("cannot pass arguments: {e}")))?;
            let result = self
                .bridge
                .bind(py)
                .call_method1(call, args)
                .map_err(|e| learner_error(py, call, e))?;
            read(&result)
        })
    }
}

impl ExternalLearner for PyLearner {
    fn parameters(&mut self) -> Result<ParameterSet, ExternalError> {
        self.call(
            "get_parameters",
            |_| Ok(Vec::new()),
            |r| from_python("get_parameters", r),
        )
    }

    fn fit(
        &mut self,
        global: &ParameterSet,
        config: &FitConfig,
    ) -> Result<FitResult, ExternalError> {
        const CALL: &str = "fit";
        self.call(
            CALL,
            |py| {
                Ok(vec![
                    to_python(py, global)?.into_any(),
                    fit_config(py, config)?.into_any(),
                ])
            },
            |r| {
                let (parameters, n, m): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) =
                    r.extract().map_err(|_| {
                        ExternalError::refused(
                            CALL,
                            "something other than (parameters, n_examples, metrics)",
                        )
                    })?;
                Ok(FitResult {
                    parameters: from_python(CALL, &parameters)?,
                    n_examples: count(CALL, &n)?,
                    metrics: metrics(CALL, &m)?,
                })
            },
        )
    }

    fn evaluate(
        &mut self,
        global: &ParameterSet,
        _config: &EvaluateConfig,
    ) -> Result<EvaluateResult, ExternalError> {
        const CALL: &str = "evaluate";
        self.call(
            CALL,
            |py| {
                Ok(vec![
                    to_python(py, global)?.into_any(),
                    PyDict::new(py).into_any(),
                ])
            },
            |r| {
                let (loss, n, m): (f64, Bound<'_, PyAny>, Bound<'_, PyAny>) =
                    r.extract().map_err(|_| {
                        ExternalError::refused(
                            CALL,
                            "something other than (loss, n_examples, metrics)",
                        )
                    })?;
                Ok(EvaluateResult {
                    loss,
                    n_examples: count(CALL, &n)?,
                    metrics: metrics(CALL, &m)?,
                })
            },
        )
    }

    /// Every call takes the GIL: the simulator calls Python sites one at a
    /// time on one thread rather than handing the GIL between threads.
    fn parallel(&self) -> bool {
        false
    }
}

/// Runs the plan (TOML text; `origin` names it in messages) with one client
/// per site, `make_client(site)` giving each site's bridge; the sites are
/// `sites`, or else the plan's `[[data.sites]]`; `train_rows` gives sites'
/// training rows by name (local DP needs every site's); `on_round`, when given, is
/// called with each round's record as JSON (an exception it raises stops
/// nothing and is raised when the run ends). Returns the report as JSON and
/// the final global parameters as `(shape, bytes)` pairs.
#[pyfunction]
#[pyo3(signature = (plan_text, origin, make_client, sites=None, on_round=None, train_rows=None))]
fn simulate<'py>(
    py: Python<'py>,
    plan_text: &str,
    origin: &str,
    make_client: &Bound<'py, PyAny>,
    sites: Option<Vec<String>>,
    on_round: Option<Py<PyAny>>,
    train_rows: Option<BTreeMap<String, usize>>,
) -> PyResult<(String, Bound<'py, PyList>)> {
    let plan =
        Plan::from_toml(plan_text, origin).map_err(|e| TesseraError::new_err(e.to_string()))?;
    let names = sites.unwrap_or_else(|| plan.data.sites.iter().map(|s| s.name.clone()).collect());
    if names.is_empty() {
        return Err(TesseraError::new_err(
            "no sites: pass sites=[...] or list them in the plan's [[data.sites]]",
        ));
    }
    let mut learners: Vec<(String, Box<dyn ExternalLearner>)> = Vec::with_capacity(names.len());
    for name in names {
        let bridge = make_client.call1((name.as_str(),))?.unbind();
        learners.push((name, Box::new(PyLearner { bridge })));
    }
    let mut callback_error: Option<PyErr> = None;
    let mut observer = |record: &tessera_sim::RoundRecord| {
        let (Some(on_round), None) = (&on_round, &callback_error) else {
            return;
        };
        let Ok(json) = serde_json::to_string(record) else {
            return;
        };
        Python::attach(|py| {
            if let Err(e) = on_round.bind(py).call1((json,)) {
                callback_error = Some(e);
            }
        });
    };
    let train_rows = train_rows.unwrap_or_default();
    let report = py.detach(|| {
        tessera_sim::simulate_with_learners(&plan, learners, &train_rows, &mut observer)
    });
    let report = report.map_err(|e| TesseraError::new_err(e.to_string()))?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    let json = serde_json::to_string(&report)
        .map_err(|e| TesseraError::new_err(format!("the report: {e}")))?;
    Ok((json, to_python(py, &report.final_parameters)?))
}

/// The module `tessera._tessera`.
#[pymodule]
fn _tessera(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(participant::run_participant, m)?)?;
    m.add("TesseraError", m.py().get_type::<TesseraError>())?;
    Ok(())
}
