//! The built-in models as one dense network with exact backpropagation.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use tessera_core::{FitStats, ParameterSet, SeededRng, Tensor};
use tessera_data::{Dataset, Features};

/// Rows densified at a time to evaluate sparse rows.
const EVALUATION_ROWS: usize = 1024;

use crate::config::{Init, MAX_PARAMETERS, ModelConfig, ModelKind};
use crate::fit::{LocalPlan, train};
use crate::metrics::Evaluation;
use crate::{LearnError, Learner};

/// What the last layer's outputs mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// One logit; sigmoid and binary cross-entropy.
    Sigmoid,
    /// One logit per class; softmax and cross-entropy.
    Softmax,
}

/// Dense layers with ReLU between them and a sigmoid or softmax head: logistic
/// regression (no hidden layer, one output), softmax regression (no hidden
/// layer, one output per class) and MLPs.
///
/// Parameters are `dense{l}.weight` (shape `[inputs, outputs]`) and
/// `dense{l}.bias` (shape `[outputs]`) for each layer `l`.
#[derive(Debug, Clone)]
pub struct Network {
    params: ParameterSet,
    dims: Vec<usize>,
    head: Head,
}

/// The layer widths and the head `config` gives `n_features` inputs and
/// `n_classes` classes, checked.
fn shape(
    config: &ModelConfig,
    n_features: usize,
    n_classes: usize,
) -> Result<(Vec<usize>, Head), LearnError> {
    if n_features == 0 {
        return Err(LearnError::Config("the data has no features".into()));
    }
    if n_classes < 2 {
        return Err(LearnError::Config(format!(
            "need at least 2 classes, got {n_classes}"
        )));
    }
    let (hidden, head, outputs) = match config.kind {
        ModelKind::Logistic => {
            if n_classes != 2 {
                return Err(LearnError::Config(format!(
                    "logistic regression needs a binary target, this one has {n_classes} classes \
                     (name the positive class, or use the softmax model)"
                )));
            }
            (Vec::new(), Head::Sigmoid, 1)
        }
        ModelKind::Softmax => (Vec::new(), Head::Softmax, n_classes),
        ModelKind::Mlp => {
            if config.hidden.is_empty() || config.hidden.contains(&0) {
                return Err(LearnError::Config(
                    "an MLP needs hidden layers of width >= 1".into(),
                ));
            }
            if config.init == Init::Zeros {
                return Err(LearnError::Config(
                    "zero initialisation leaves an MLP's hidden units identical; use `uniform`"
                        .into(),
                ));
            }
            if n_classes == 2 {
                (config.hidden.clone(), Head::Sigmoid, 1)
            } else {
                (config.hidden.clone(), Head::Softmax, n_classes)
            }
        }
        ModelKind::External => {
            return Err(LearnError::Config(
                "an external model (kind = \"external\") is each site's own learner's; \
                 Tessera builds no network for it"
                    .into(),
            ));
        }
    };
    if config.kind != ModelKind::Mlp && !config.hidden.is_empty() {
        return Err(LearnError::Config(
            "`hidden` layers apply to the mlp model only".into(),
        ));
    }
    let mut dims = vec![n_features];
    dims.extend(hidden);
    dims.push(outputs);
    let n_parameters = dims.windows(2).try_fold(0usize, |total, pair| {
        pair[0]
            .checked_mul(pair[1])
            .and_then(|w| w.checked_add(pair[1]))
            .and_then(|layer| total.checked_add(layer))
    });
    if n_parameters.is_none_or(|n| n > MAX_PARAMETERS) {
        return Err(LearnError::Config(format!(
            "the model would have more than {MAX_PARAMETERS} parameters (layers {dims:?})"
        )));
    }
    Ok((dims, head))
}

/// The parameters of layers `dims`, initialised from `seed`.
fn init(config: &ModelConfig, dims: &[usize], seed: u64) -> Result<ParameterSet, LearnError> {
    let mut rng = SeededRng::new(seed);
    let mut params = ParameterSet::new();
    for l in 0..dims.len() - 1 {
        let (fan_in, fan_out) = (dims[l], dims[l + 1]);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut draw = |n: usize| -> Vec<f32> {
            match config.init {
                Init::Zeros => vec![0.0; n],
                Init::Uniform => (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect(),
            }
        };
        let weight = Tensor::new(vec![fan_in, fan_out], draw(fan_in * fan_out))?;
        let bias = Tensor::new(vec![fan_out], draw(fan_out))?;
        params.push(format!("dense{l}.weight"), weight)?;
        params.push(format!("dense{l}.bias"), bias)?;
    }
    Ok(params)
}

/// The initial parameters of the network `config` describes (see
/// [`Network::new`]), without building it.
pub(crate) fn initial_parameters(
    config: &ModelConfig,
    n_features: usize,
    n_classes: usize,
    seed: u64,
) -> Result<ParameterSet, LearnError> {
    let (dims, _) = shape(config, n_features, n_classes)?;
    init(config, &dims, seed)
}

impl Network {
    /// Builds the model `config` describes for `n_features` inputs and
    /// `n_classes` classes, initialised from `seed`.
    pub fn new(
        config: &ModelConfig,
        n_features: usize,
        n_classes: usize,
        seed: u64,
    ) -> Result<Self, LearnError> {
        let (dims, head) = shape(config, n_features, n_classes)?;
        let params = init(config, &dims, seed)?;
        Ok(Self { params, dims, head })
    }

    /// Number of inputs.
    pub fn n_features(&self) -> usize {
        self.dims[0]
    }

    fn n_layers(&self) -> usize {
        self.dims.len() - 1
    }

    fn layer(&self, l: usize) -> (ArrayView2<'_, f32>, ArrayView1<'_, f32>) {
        let tensors = self.params.tensors();
        let w = ArrayView2::from_shape((self.dims[l], self.dims[l + 1]), tensors[2 * l].data())
            .expect("weight shape is fixed at construction");
        let b = ArrayView1::from(tensors[2 * l + 1].data());
        (w, b)
    }

    /// The hidden layers' ReLU outputs and the output logits.
    fn forward(&self, x: ArrayView2<'_, f32>) -> (Vec<Array2<f32>>, Array2<f32>) {
        let mut hidden: Vec<Array2<f32>> = Vec::with_capacity(self.n_layers() - 1);
        for l in 0..self.n_layers() {
            let (w, b) = self.layer(l);
            let mut z = match hidden.last() {
                Some(input) => input.dot(&w),
                None => x.dot(&w),
            };
            z += &b;
            if l + 1 == self.n_layers() {
                return (hidden, z);
            }
            z.mapv_inplace(|v| v.max(0.0));
            hidden.push(z);
        }
        unreachable!("a network has at least one layer")
    }

    /// The input of layer `l`: the rows for the first layer, else a hidden output.
    fn layer_input<'a>(
        x: ArrayView2<'a, f32>,
        hidden: &'a [Array2<f32>],
        l: usize,
    ) -> ArrayView2<'a, f32> {
        if l == 0 { x } else { hidden[l - 1].view() }
    }

    /// Output logits for each row.
    pub fn logits(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.forward(x).1
    }

    /// Per-example loss and the loss gradient with respect to the logits.
    fn output_delta(&self, logits: &Array2<f32>, y: &[u32]) -> (Vec<f64>, Array2<f32>) {
        let mut delta = Array2::<f32>::zeros(logits.raw_dim());
        let mut losses = Vec::with_capacity(y.len());
        match self.head {
            Head::Sigmoid => {
                for (i, &label) in y.iter().enumerate() {
                    let z = f64::from(logits[[i, 0]]);
                    let t = f64::from(label.min(1));
                    // softplus(z) - t z, computed stably.
                    losses.push(z.max(0.0) - t * z + (-z.abs()).exp().ln_1p());
                    delta[[i, 0]] = (sigmoid(z) - t) as f32;
                }
            }
            Head::Softmax => {
                for (i, &label) in y.iter().enumerate() {
                    let row = logits.row(i);
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
                    let log_sum = f64::from(max) + sum.ln();
                    let label = label as usize;
                    losses.push(log_sum - f64::from(row[label]));
                    for (c, &v) in row.iter().enumerate() {
                        let p = (f64::from(v) - log_sum).exp();
                        delta[[i, c]] = (p - if c == label { 1.0 } else { 0.0 }) as f32;
                    }
                }
            }
        }
        (losses, delta)
    }

    /// `Σ_i w_i loss_i` and its gradient `Σ_i w_i ∇loss_i` written into `grad`
    /// (same layout as the parameters). `weights` defaults to `1/n` (the mean).
    pub fn loss_and_gradient(
        &self,
        x: ArrayView2<'_, f32>,
        y: &[u32],
        weights: Option<&[f32]>,
        grad: &mut ParameterSet,
    ) -> f64 {
        let n = y.len();
        let (hidden, logits) = self.forward(x);
        let (losses, mut delta) = self.output_delta(&logits, y);
        let uniform = 1.0 / n.max(1) as f32;
        let weight = |i: usize| weights.map_or(uniform, |w| w[i]);
        for (i, mut row) in delta.rows_mut().into_iter().enumerate() {
            row *= weight(i);
        }
        let loss = losses
            .iter()
            .enumerate()
            .map(|(i, l)| f64::from(weight(i)) * l)
            .sum();
        let tensors = grad.tensors_mut();
        for l in (0..self.n_layers()).rev() {
            let a_prev = Self::layer_input(x, &hidden, l);
            let mut gw = ArrayViewMut2::from_shape(
                (self.dims[l], self.dims[l + 1]),
                tensors[2 * l].data_mut(),
            )
            .expect("gradient layout equals parameter layout");
            general_mat_mul(1.0, &a_prev.t(), &delta, 0.0, &mut gw);
            let mut gb = ArrayViewMut1::from(tensors[2 * l + 1].data_mut());
            gb.assign(&delta.sum_axis(Axis(0)));
            if l > 0 {
                delta = self.delta_below(l, &delta, a_prev);
            }
        }
        loss
    }

    /// Backpropagates `delta` (the loss gradient at layer `l`'s output)
    /// through layer `l` and the ReLU that produced its input `a_prev`.
    fn delta_below(
        &self,
        l: usize,
        delta: &Array2<f32>,
        a_prev: ArrayView2<'_, f32>,
    ) -> Array2<f32> {
        let (w, _) = self.layer(l);
        let mut below = delta.dot(&w.t());
        below.zip_mut_with(&a_prev, |d, &a| {
            if a <= 0.0 {
                *d = 0.0;
            }
        });
        below
    }

    /// The Euclidean norm of each example's own loss gradient, exactly:
    /// per dense layer the example's weight gradient is the outer product
    /// `a ⊗ δ`, whose squared norm is `||a||² ||δ||²`, plus `||δ||²` for the bias.
    pub fn per_example_gradient_norms(&self, x: ArrayView2<'_, f32>, y: &[u32]) -> Vec<f32> {
        let (hidden, logits) = self.forward(x);
        let (_, mut delta) = self.output_delta(&logits, y);
        let mut sq = vec![0.0f64; y.len()];
        for l in (0..self.n_layers()).rev() {
            let a_prev = Self::layer_input(x, &hidden, l);
            for (i, s) in sq.iter_mut().enumerate() {
                let a2: f64 = a_prev
                    .row(i)
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum();
                let d2: f64 = delta
                    .row(i)
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum();
                *s += d2 * (a2 + 1.0);
            }
            if l > 0 {
                delta = self.delta_below(l, &delta, a_prev);
            }
        }
        sq.into_iter().map(|s| s.sqrt() as f32).collect()
    }

    /// Class probabilities, one row per example (binary: `[1 - p, p]`).
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let logits = self.logits(x);
        match self.head {
            Head::Sigmoid => {
                let mut out = Array2::zeros((logits.nrows(), 2));
                for (i, &z) in logits.column(0).iter().enumerate() {
                    let p = sigmoid(f64::from(z)) as f32;
                    out[[i, 0]] = 1.0 - p;
                    out[[i, 1]] = p;
                }
                out
            }
            Head::Softmax => {
                let mut out = logits;
                for mut row in out.rows_mut() {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    row.mapv_inplace(|v| (v - max).exp());
                    let sum: f32 = row.sum();
                    row /= sum;
                }
                out
            }
        }
    }

    pub(crate) fn params_mut(&mut self) -> &mut ParameterSet {
        &mut self.params
    }

    pub(crate) fn check_features(&self, data: &Dataset) -> Result<(), LearnError> {
        if data.n_features() != self.n_features() {
            return Err(LearnError::FeatureCount {
                expected: self.n_features(),
                actual: data.n_features(),
            });
        }
        Ok(())
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Learner for Network {
    fn parameters(&self) -> &ParameterSet {
        &self.params
    }

    fn set_parameters(&mut self, parameters: &ParameterSet) -> Result<(), LearnError> {
        self.params.check_same_layout(parameters)?;
        self.params.clone_from(parameters);
        Ok(())
    }

    fn fit(
        &mut self,
        data: &Dataset,
        plan: &LocalPlan<'_>,
        rng: &mut SeededRng,
    ) -> Result<FitStats, LearnError> {
        self.check_features(data)?;
        train(self, data, plan, rng)
    }

    fn evaluate(&self, data: &Dataset) -> Result<Evaluation, LearnError> {
        self.check_features(data)?;
        let proba = match &data.x {
            Features::Dense(x) => self.predict_proba(x.view()),
            // A densified chunk of rows at a time, never the matrix.
            sparse => {
                let n = sparse.nrows();
                let chunks: Vec<Array2<f32>> = (0..n.max(1))
                    .step_by(EVALUATION_ROWS)
                    .map(|start| {
                        let end = (start + EVALUATION_ROWS).min(n);
                        self.predict_proba(sparse.rows(start.min(end)..end).view())
                    })
                    .collect();
                let views: Vec<_> = chunks.iter().map(|c| c.view()).collect();
                ndarray::concatenate(Axis(0), &views)
                    .unwrap_or_else(|_| Array2::zeros((0, chunks.first().map_or(2, |c| c.ncols()))))
            }
        };
        Ok(Evaluation::from_probabilities(&proba, &data.y))
    }

    fn clone_box(&self) -> Box<dyn Learner> {
        Box::new(self.clone())
    }

    fn gradient(&self, data: &Dataset, max_rows: usize) -> Result<(f64, ParameterSet), LearnError> {
        self.check_features(data)?;
        let n = data.n_rows().min(max_rows);
        if n == 0 {
            return Err(LearnError::Config("gradient: no rows to take it on".into()));
        }
        let mut grad = self.params.zeros_like();
        let rows = data.x.rows(0..n);
        let loss = self.loss_and_gradient(rows.view(), &data.y[..n], None, &mut grad);
        if !loss.is_finite() || grad.check_finite().is_err() {
            return Err(LearnError::Diverged { step: 0 });
        }
        Ok((loss, grad))
    }

    fn importance(&self, data: &Dataset, max_rows: usize) -> Result<ParameterSet, LearnError> {
        self.check_features(data)?;
        let n = data.n_rows().min(max_rows);
        if n == 0 {
            return Err(LearnError::Config(
                "importance: no rows to measure it on".into(),
            ));
        }
        let mut sum = self.params.zeros_like();
        let mut grad = self.params.zeros_like();
        for i in 0..n {
            let row = data.x.rows(i..i + 1);
            self.loss_and_gradient(row.view(), &data.y[i..i + 1], None, &mut grad);
            for (s, g) in sum.values_mut().zip(grad.values()) {
                *s += g * g;
            }
        }
        let scale = 1.0 / n as f32;
        sum.values_mut().for_each(|s| *s *= scale);
        if sum.check_finite().is_err() {
            return Err(LearnError::Config(
                "importance: a squared gradient is not a finite number (the model's \
                 parameters are too large)"
                    .into(),
            ));
        }
        Ok(sum)
    }
}
