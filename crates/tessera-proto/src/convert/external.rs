//! The external agreement (1.10, `external-learners`): a site whose model
//! lives outside Tessera offers its row counts and its model's initial
//! parameters; the agreement is the layout every site's must have.

use tessera_core::ParameterSet;
use tessera_data::MAX_DECLARED_ROWS;

use crate::{Limits, ProtoError, layout_of, parameters_from_stored, pb, stored_parameters};

/// The most values an external offer's initial parameters may hold
/// (3 * 2^20: 12 MiB of `f32`, under the 16 MiB a message may have).
pub const MAX_OFFERED_VALUES: u64 = 3 << 20;
/// The most tensors an external offer's initial parameters may hold.
pub const MAX_OFFERED_TENSORS: usize = 10_000;
/// The longest tensor name an external offer may use, in bytes.
pub const MAX_TENSOR_NAME: usize = 256;

/// A site's external offer, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalOffer {
    /// The site.
    pub site: String,
    /// Its declared training rows (at least 1): the bound of every count
    /// it reports for training.
    pub train_rows: u64,
    /// Its declared test rows: the bound of every count it reports for evaluation.
    pub test_rows: u64,
    /// Its model's initial parameters (the layout every site's must have).
    pub initial: ParameterSet,
}

/// The agreed layout of an external model.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalAgreement {
    /// The site whose initial parameters start the global model.
    pub initial_site: String,
    /// The layout: names and shapes, in order.
    pub layout: Vec<pb::TensorSpec>,
}

/// An external offer on the wire.
pub fn external_offer_to_pb(
    train_rows: u64,
    test_rows: u64,
    initial: &ParameterSet,
) -> pb::ExternalOffer {
    pb::ExternalOffer {
        train_rows,
        test_rows,
        initial: Some(stored_parameters(initial)),
    }
}

/// The external offer of `site` from the wire, checked: row counts within
/// bounds (at least one training row, at most 2^40 of each), parameters
/// within [`MAX_OFFERED_VALUES`] and [`MAX_OFFERED_TENSORS`], tensor names
/// short and not empty, at least one value, every value finite.
pub fn external_offer_from_pb(
    site: &str,
    offer: &pb::ExternalOffer,
) -> Result<ExternalOffer, ProtoError> {
    let malformed = |what: String| ProtoError::Malformed(format!("external offer: {what}"));
    if offer.train_rows == 0 {
        return Err(malformed(
            "no training rows declared (train_rows = 0); a site declares the rows its learner \
             trains on"
                .into(),
        ));
    }
    for (what, rows) in [("training", offer.train_rows), ("test", offer.test_rows)] {
        if rows > MAX_DECLARED_ROWS {
            return Err(ProtoError::TooLarge(format!(
                "external offer: {rows} {what} rows declared; at most {MAX_DECLARED_ROWS} are \
                 accepted"
            )));
        }
    }
    let Some(stored) = &offer.initial else {
        return Err(malformed("no initial parameters".into()));
    };
    if let Some(spec) = stored
        .layout
        .iter()
        .find(|s| s.name.len() > MAX_TENSOR_NAME)
    {
        return Err(ProtoError::TooLarge(format!(
            "external offer: a tensor name of {} bytes ('{}'); at most {MAX_TENSOR_NAME}",
            spec.name.len(),
            crate::shown(&spec.name, 40)
        )));
    }
    if stored.layout.iter().any(|s| s.name.is_empty()) {
        return Err(malformed("a tensor without a name".into()));
    }
    let limits = Limits {
        max_values: MAX_OFFERED_VALUES,
        max_tensors: MAX_OFFERED_TENSORS,
        max_chunk_bytes: usize::MAX,
    };
    let initial = parameters_from_stored(stored, limits).map_err(|e| match e {
        ProtoError::TooLarge(what) => ProtoError::TooLarge(format!(
            "external offer: initial parameters of {what} (an offer holds at most \
             {MAX_OFFERED_VALUES} values in {MAX_OFFERED_TENSORS} tensors)"
        )),
        other => malformed(format!("initial parameters: {other}")),
    })?;
    if initial.n_values() == 0 {
        return Err(malformed("initial parameters without any value".into()));
    }
    initial
        .check_finite()
        .map_err(|e| malformed(format!("initial parameters: {e}")))?;
    Ok(ExternalOffer {
        site: site.to_string(),
        train_rows: offer.train_rows,
        test_rows: offer.test_rows,
        initial,
    })
}

/// The external agreement on the wire: `initial`'s layout, and whose it is.
pub fn external_agreement_to_pb(
    initial_site: &str,
    initial: &ParameterSet,
) -> pb::ExternalAgreement {
    pb::ExternalAgreement {
        layout: layout_of(initial),
        initial_site: initial_site.to_string(),
    }
}

/// The external agreement from the wire, checked against `own`, this
/// site's initial parameters: the layouts must be the same.
pub fn external_agreement_from_pb(
    agreement: pb::ExternalAgreement,
    own: &ParameterSet,
) -> Result<ExternalAgreement, ProtoError> {
    let mine = layout_of(own);
    if let Some(difference) = layout_difference(&agreement.layout, &mine) {
        return Err(ProtoError::Malformed(format!(
            "the federation's model (from site '{}') has another layout than this site's \
             learner: {difference}",
            crate::shown(&agreement.initial_site, crate::MAX_SITE_NAME)
        )));
    }
    Ok(ExternalAgreement {
        initial_site: agreement.initial_site,
        layout: agreement.layout,
    })
}

/// The first difference between two layouts, named (`None`: the same).
fn layout_difference(agreed: &[pb::TensorSpec], own: &[pb::TensorSpec]) -> Option<String> {
    for (k, (a, o)) in agreed.iter().zip(own).enumerate() {
        if a.name != o.name {
            return Some(format!(
                "tensor {k} is '{}' there, '{}' here",
                crate::shown(&a.name, 60),
                crate::shown(&o.name, 60)
            ));
        }
        if a.shape != o.shape {
            return Some(format!(
                "tensor '{}' has shape {:?} there, {:?} here",
                crate::shown(&a.name, 60),
                a.shape,
                o.shape
            ));
        }
    }
    (agreed.len() != own.len())
        .then(|| format!("{} tensors there, {} here", agreed.len(), own.len()))
}

#[cfg(test)]
mod tests {
    use tessera_core::Tensor;

    use super::*;

    fn model() -> ParameterSet {
        let mut set = ParameterSet::new();
        set.push(
            "w",
            Tensor::new(vec![3, 2], vec![0.5, -1.0, 2.0, 0.0, 1.5, -0.25]).unwrap(),
        )
        .unwrap();
        set.push("b", Tensor::new(vec![2], vec![0.1, 0.2]).unwrap())
            .unwrap();
        set
    }

    fn refused(offer: &pb::ExternalOffer) -> String {
        external_offer_from_pb("a", offer).unwrap_err().to_string()
    }

    #[test]
    fn an_offer_round_trips_bit_for_bit() {
        let wire = external_offer_to_pb(120, 30, &model());
        let offer = external_offer_from_pb("a", &wire).unwrap();
        assert_eq!(
            (offer.site.as_str(), offer.train_rows, offer.test_rows),
            ("a", 120, 30)
        );
        assert!(
            offer
                .initial
                .values()
                .map(f32::to_bits)
                .eq(model().values().map(f32::to_bits))
        );
        offer.initial.check_same_layout(&model()).unwrap();
    }

    #[test]
    fn hostile_offers_are_refused_naming_what_was_wrong() {
        let good = external_offer_to_pb(120, 30, &model());
        let e = refused(&pb::ExternalOffer {
            train_rows: 0,
            ..good.clone()
        });
        assert!(e.contains("no training rows"), "{e}");
        let e = refused(&pb::ExternalOffer {
            test_rows: u64::MAX,
            ..good.clone()
        });
        assert!(e.contains("test rows") && e.contains("at most"), "{e}");
        let e = refused(&pb::ExternalOffer {
            initial: None,
            ..good.clone()
        });
        assert!(e.contains("no initial parameters"), "{e}");
        // A layout that announces more values than an offer may hold: refused
        // before anything of that size is allocated.
        let mut huge = good.clone();
        huge.initial.as_mut().unwrap().layout[0].shape = vec![1 << 20, 1 << 20];
        let e = refused(&huge);
        assert!(e.contains("too large") && e.contains("values"), "{e}");
        let mut overflow = good.clone();
        overflow.initial.as_mut().unwrap().layout[0].shape = vec![u64::MAX, u64::MAX];
        assert!(refused(&overflow).contains("too large"));
        let mut many = good.clone();
        many.initial.as_mut().unwrap().layout = (0..=MAX_OFFERED_TENSORS)
            .map(|k| pb::TensorSpec {
                name: format!("t{k}"),
                shape: vec![0],
            })
            .collect();
        assert!(refused(&many).contains("tensors"));
        let mut long = good.clone();
        long.initial.as_mut().unwrap().layout[0].name = "x".repeat(MAX_TENSOR_NAME + 1);
        assert!(refused(&long).contains("tensor name"));
        let mut short = good.clone();
        short.initial.as_mut().unwrap().values.truncate(8);
        assert!(refused(&short).contains("initial parameters"));
        let mut nan = good.clone();
        nan.initial.as_mut().unwrap().values[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = refused(&nan);
        assert!(e.contains("initial parameters") && e.contains('w'), "{e}");
        let mut empty = good.clone();
        empty.initial = Some(pb::StoredParameters {
            layout: vec![pb::TensorSpec {
                name: "w".into(),
                shape: vec![0],
            }],
            values: Vec::new(),
        });
        assert!(refused(&empty).contains("without any value"));
    }

    #[test]
    fn an_agreement_of_another_layout_is_refused_naming_the_difference() {
        let wire = external_agreement_to_pb("a", &model());
        let agreed = external_agreement_from_pb(wire.clone(), &model()).unwrap();
        assert_eq!(agreed.initial_site, "a");
        let mut other = ParameterSet::new();
        other
            .push("w", Tensor::new(vec![2, 3], vec![0.0; 6]).unwrap())
            .unwrap();
        other
            .push("b", Tensor::new(vec![2], vec![0.0; 2]).unwrap())
            .unwrap();
        let e = external_agreement_from_pb(wire.clone(), &other)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'w'") && e.contains("[3, 2]") && e.contains("[2, 3]"),
            "{e}"
        );
        let mut fewer = ParameterSet::new();
        fewer
            .push("w", Tensor::new(vec![3, 2], vec![0.0; 6]).unwrap())
            .unwrap();
        let e = external_agreement_from_pb(wire, &fewer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 tensors there, 1 here"), "{e}");
    }
}
