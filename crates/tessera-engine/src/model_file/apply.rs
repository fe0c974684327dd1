//! A model file applied to raw rows: the stored preprocessing (feature
//! order, one-hot vocabularies, imputation, standardisation), then the model.

use ndarray::Array2;
use tessera_data::{Encoding, Scaler, Table, canonical_level};
use tessera_learn::Learner;

use super::{ModelFile, ModelFileError};

/// What a model predicts for each row.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Each row's most probable class (an index into the classes).
    pub class: Vec<usize>,
    /// Each row's probability of each class.
    pub probabilities: Array2<f32>,
}

impl ModelFile {
    /// `table`'s rows encoded as the model's inputs, before
    /// standardisation: each column where the agreement puts it, one-hot
    /// over the stored vocabulary (a level outside it, or a missing value,
    /// sets no indicator), missing numbers as NaN. Columns the model does
    /// not use are ignored; a missing one is refused by name.
    pub fn encode(&self, table: &Table) -> Result<Array2<f32>, ModelFileError> {
        let h = &self.header;
        let mut fields = Vec::with_capacity(h.agreement.columns.len());
        for column in &h.agreement.columns {
            let Some(i) = table.header.iter().position(|n| n == column) else {
                return Err(ModelFileError::Rows(format!(
                    "the data has no column '{column}', which the model needs (it needs: {})",
                    tessera_core::shown(&h.agreement.columns.join(", "), 500)
                )));
            };
            fields.push(i);
        }
        let mut x = Array2::<f32>::zeros((table.rows.len(), self.n_features()));
        let missing = |text: &str| text.is_empty() || h.missing.iter().any(|m| m == text);
        for (r, (line, row)) in table.rows.iter().enumerate() {
            let mut offset = 0;
            for ((&field, encoding), column) in fields
                .iter()
                .zip(&h.agreement.encodings)
                .zip(&h.agreement.columns)
            {
                let text = row.get(field).map_or("", String::as_str);
                match encoding {
                    Encoding::Numeric => {
                        x[[r, offset]] = if missing(text) {
                            f32::NAN
                        } else {
                            match text.parse::<f64>() {
                                Ok(v) if v.is_finite() => v as f32,
                                _ => {
                                    return Err(ModelFileError::Rows(format!(
                                        "line {line}, column '{column}': '{}' is not a number",
                                        tessera_core::shown(text, 100)
                                    )));
                                }
                            }
                        };
                        offset += 1;
                    }
                    Encoding::OneHot { levels, drop_first } => {
                        let skip = usize::from(*drop_first);
                        if !missing(text) {
                            let level = canonical_level(text);
                            if let Some(c) = levels
                                .iter()
                                .position(|l| *l == level)
                                .and_then(|p| p.checked_sub(skip))
                            {
                                x[[r, offset + c]] = 1.0;
                            }
                        }
                        offset += levels.len().saturating_sub(skip);
                    }
                }
            }
        }
        Ok(x)
    }

    /// `table`'s rows as the model's standardised inputs: missing numbers
    /// imputed with the stored mean, then `(x - mean) / scale`. A file
    /// without stored statistics (each site of its run standardised with
    /// its own) standardises the rows with their own: missing numbers take
    /// their column's mean, then the rows' statistics, as a site did.
    pub fn inputs(&self, table: &Table) -> Result<Array2<f32>, ModelFileError> {
        let mut x = self.encode(table)?;
        let s = &self.header.standardization;
        let scaler = match (&s.mean, &s.scale) {
            (Some(mean), Some(scale)) => Scaler {
                mean: mean.clone(),
                scale: scale.clone(),
            },
            _ => {
                impute(&mut x, None);
                if x.nrows() as u64 <= u64::from(s.config.ddof) {
                    return Err(ModelFileError::Rows(format!(
                        "the model standardises rows with their own statistics (its run's sites \
                         each did), and {} rows are too few for that",
                        x.nrows()
                    )));
                }
                Scaler::fit(&x, &s.config, &self.header.agreement.indicators())
            }
        };
        impute(&mut x, Some(&scaler.mean));
        Ok(scaler.apply(&x))
    }

    /// The model's predictions for `table`'s rows.
    pub fn predict(&self, table: &Table) -> Result<Predictions, ModelFileError> {
        let x = self.inputs(table)?;
        self.predict_inputs(&x)
    }

    /// The model's predictions for rows already encoded and standardised.
    pub fn predict_inputs(&self, x: &Array2<f32>) -> Result<Predictions, ModelFileError> {
        let network = tessera_learn::Network::new(
            &self.header.model,
            self.n_features(),
            self.classes().len(),
            0,
        )
        .and_then(|mut n| {
            n.set_parameters(&self.parameters)?;
            Ok(n)
        })
        .map_err(|e| ModelFileError::Malformed(format!("its model: {e}")))?;
        let probabilities = network.predict_proba(x.view());
        let class = probabilities
            .rows()
            .into_iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                        if p > best.1 { (i, p) } else { best }
                    })
                    .0
            })
            .collect();
        Ok(Predictions {
            class,
            probabilities,
        })
    }
}

/// A model's scores on labelled rows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scores {
    /// Rows scored (those whose class the model knows).
    pub n: u64,
    /// Rows whose most probable class is theirs.
    pub correct: u64,
    /// The sum over the rows of the cross-entropy, `-ln p(their class)`
    /// (each probability floored at 1e-7, as training's loss is).
    pub loss_sum: f64,
}

impl ModelFile {
    /// A site's `table` of rows as the model's inputs: as
    /// [`ModelFile::inputs`], but where the model stores no statistics
    /// (each site of its run standardised with its own), standardised as
    /// that site did in training: imputed and scaled with the statistics
    /// of the site's training rows `train`.
    pub fn site_inputs(&self, train: &Table, table: &Table) -> Result<Array2<f32>, ModelFileError> {
        let s = &self.header.standardization;
        if s.mean.is_some() && s.scale.is_some() {
            return self.inputs(table);
        }
        let mut fit = self.encode(train)?;
        impute(&mut fit, None);
        if fit.nrows() as u64 <= u64::from(s.config.ddof) {
            return Err(ModelFileError::Rows(format!(
                "the model standardises a site's rows with the statistics of its training rows, \
                 and {} training rows are too few for that",
                fit.nrows()
            )));
        }
        let scaler = Scaler::fit(&fit, &s.config, &self.header.agreement.indicators());
        let mut x = self.encode(table)?;
        impute(&mut x, Some(&scaler.mean));
        Ok(scaler.apply(&x))
    }

    /// The model's scores on a site's `table` of rows (standardised as
    /// [`ModelFile::site_inputs`] does with the site's training rows
    /// `train`), whose classes are `labels` (by name, as the model's
    /// classes are; a row without one, or with one the model does not
    /// know, is not scored).
    pub fn score(
        &self,
        train: &Table,
        table: &Table,
        labels: &[Option<String>],
    ) -> Result<Scores, ModelFileError> {
        self.score_rows(train, table, labels)
            .map(|(scores, _)| scores)
    }

    /// As [`ModelFile::score`], with each row's outcome: whether the model
    /// got it right (`None`: the row is not scored).
    pub fn score_rows(
        &self,
        train: &Table,
        table: &Table,
        labels: &[Option<String>],
    ) -> Result<(Scores, Vec<Option<bool>>), ModelFileError> {
        if labels.len() != table.rows.len() {
            return Err(ModelFileError::Rows(format!(
                "{} rows and {} labels",
                table.rows.len(),
                labels.len()
            )));
        }
        let mut scores = Scores::default();
        let mut outcomes = vec![None; labels.len()];
        if table.rows.is_empty() {
            return Ok((scores, outcomes));
        }
        let predictions = self.predict_inputs(&self.site_inputs(train, table)?)?;
        for (row, label) in labels.iter().enumerate() {
            let Some(k) = label
                .as_ref()
                .and_then(|l| self.classes().iter().position(|c| c == l))
            else {
                continue;
            };
            let right = predictions.class[row] == k;
            scores.n += 1;
            scores.correct += u64::from(right);
            outcomes[row] = Some(right);
            let p = f64::from(predictions.probabilities[[row, k]]).max(1e-7);
            scores.loss_sum -= p.ln();
        }
        Ok((scores, outcomes))
    }
}

/// Replaces NaN in each column by `means` (or, without, the mean of the
/// column's other values; 0 when it has none).
fn impute(x: &mut Array2<f32>, means: Option<&[f64]>) {
    for (j, mut column) in x.columns_mut().into_iter().enumerate() {
        if !column.iter().any(|v| v.is_nan()) {
            continue;
        }
        let fill = match means {
            Some(means) => means.get(j).copied().unwrap_or(0.0),
            None => {
                let present: Vec<f64> = column
                    .iter()
                    .filter(|v| !v.is_nan())
                    .map(|&v| f64::from(v))
                    .collect();
                if present.is_empty() {
                    0.0
                } else {
                    present.iter().sum::<f64>() / present.len() as f64
                }
            }
        };
        for v in column.iter_mut().filter(|v| v.is_nan()) {
            *v = fill as f32;
        }
    }
}
