//! The agreement of a plan whose model is external (`[model] kind =
//! "external"`): one step, in which each site offers its declared row
//! counts and its learner's initial parameters. It closes once every
//! expected site has offered: the global model starts from the parameters
//! of the first site by name (as `tessera_sim::simulate_with_learners`
//! does), and every other site's must have their layout; a site whose
//! layout differs is set aside with the difference named, and the others
//! wait. The offers, the agreed layout, an empty data agreement and the
//! initial model are stored together, so a restarted coordinator resumes
//! as it does any run.

use prost::Message;
use tessera_data::Agreement;
use tessera_proto::convert::{self, ExternalOffer};
use tessera_proto::pb;

use super::{Federation, Refusal, trust, unavailable};
use crate::store::AgreementStep;

impl Federation {
    /// Refuses a data offer (kinds, levels, statistics) when the plan's
    /// model is external: its sites offer their learners' layouts instead.
    pub(super) fn refuse_data_offer(&self, site: &str, action: &str) -> Result<(), Refusal> {
        if !self.plan.model.kind.is_external() {
            return Ok(());
        }
        let reason = "this site offers CSV data, but the plan's model is external (kind = \
                      \"external\" in [model]): each site joins with its own learner \
                      (tessera_participant::run_external, or the Python package)"
            .to_string();
        self.refuse_report(site, action, &reason);
        Err(Refusal::Invalid(reason))
    }

    /// The external agreement step: `site`'s row counts and initial
    /// parameters. Returns the agreed layout once every expected site has
    /// offered; the first round can then open.
    pub fn offer_external(
        &mut self,
        site: &str,
        offer: pb::ExternalOffer,
    ) -> Result<Option<pb::ExternalAgreement>, Refusal> {
        self.require_joined(site)?;
        self.touch(site);
        if !self.plan.model.kind.is_external() {
            let reason = format!(
                "this site offers an external learner, but the plan's model is built in \
                 (kind = \"{:?}\"): run the participant with the site's data, or give the \
                 coordinator a plan with kind = \"external\" in [model]",
                self.plan.model.kind
            )
            .to_lowercase();
            self.refuse_report(site, "agree-external", &reason);
            return Err(Refusal::Invalid(reason));
        }
        if let Some(reason) = self.odd_offers.remove(site) {
            // Its offer was set aside; it hears why once, and may offer again.
            return Err(Refusal::Invalid(reason));
        }
        let parsed = convert::external_offer_from_pb(site, &offer).map_err(|e| {
            let reason = format!("'{site}': {e}");
            self.refuse_report(site, "agree-external", &reason);
            Refusal::Invalid(reason)
        })?;
        let declared = trust::Declared {
            train: parsed.train_rows,
            test: parsed.test_rows,
        };
        self.declare(
            site,
            declared,
            AgreementStep::External,
            "agree-external",
            &offer.encode_to_vec(),
        )?;
        if self.agreement.is_some() {
            return self.agreed_layout(&parsed).map(Some);
        }
        let Some(offers) = self
            .quorum_of_offers(AgreementStep::External)
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        // Stored offers were checked when they came; their sites in name order.
        let offers: Vec<ExternalOffer> = offers
            .into_iter()
            .filter_map(|(s, bytes)| {
                let offer = pb::ExternalOffer::decode(bytes.as_slice()).ok()?;
                convert::external_offer_from_pb(&s, &offer).ok()
            })
            .collect();
        let Some(first) = offers.iter().min_by(|a, b| a.site.cmp(&b.site)) else {
            return Ok(None);
        };
        let odd: Vec<(String, String)> = offers
            .iter()
            .filter_map(|o| {
                let e = first.initial.check_same_layout(&o.initial).err()?;
                Some((o.site.clone(), layout_refusal(&o.site, &first.site, &e)))
            })
            .collect();
        if !odd.is_empty() {
            for (odd_site, reason) in odd {
                self.store
                    .delete_offer(&self.run.id, AgreementStep::External, &odd_site)
                    .map_err(unavailable)?;
                self.declared.remove(&odd_site);
                self.refuse_report(&odd_site, "agree-external", &reason);
                self.odd_offers.insert(odd_site, reason);
            }
            self.version += 1;
            return match self.odd_offers.remove(site) {
                Some(reason) => Err(Refusal::Invalid(reason)),
                None => Ok(None),
            };
        }
        let initial = first.initial.clone();
        let agreed = convert::external_agreement_to_pb(&first.site, &initial);
        // No columns, no classes: the sites' learners hold their rows.
        let agreement = Agreement {
            columns: Vec::new(),
            encodings: Vec::new(),
            classes: Vec::new(),
        };
        let now = self.now();
        let run = self.run.id.as_str();
        let (encoded_layout, encoded) = (
            agreed.encode_to_vec(),
            convert::agreement_to_pb(&agreement).encode_to_vec(),
        );
        // The initial model, the layout and the (empty) data agreement are
        // stored together, or none of them.
        self.store
            .write(&mut |tx| {
                tx.put_model(run, 0, &initial, now)?;
                tx.put_agreement(run, AgreementStep::External, &encoded_layout)?;
                tx.put_agreement(run, AgreementStep::Levels, &encoded)
            })
            .map_err(unavailable)?;
        let detail = format!(
            "{} values in {} tensors, from '{}'",
            initial.n_values(),
            initial.n_tensors(),
            first.site
        );
        self.open_training(site, &agreement, initial, ("agree-external", &detail))?;
        Ok(Some(agreed))
    }

    /// A site's offer after the agreement: its layout must be the agreed one.
    fn agreed_layout(&mut self, offer: &ExternalOffer) -> Result<pb::ExternalAgreement, Refusal> {
        let stored = self
            .store
            .agreement(&self.run.id, AgreementStep::External)
            .map_err(unavailable)?
            .ok_or_else(|| {
                Refusal::Invalid(
                    "this run's agreement is not an external model's: the plan changed since it \
                     started"
                        .into(),
                )
            })?;
        let agreed = pb::ExternalAgreement::decode(stored.as_slice())
            .map_err(|e| Refusal::Invalid(format!("the stored layout is damaged: {e}")))?;
        if let Err(e) = convert::external_agreement_from_pb(agreed.clone(), &offer.initial) {
            let reason = format!("'{}': {e}", offer.site);
            self.refuse_report(&offer.site, "agree-external", &reason);
            return Err(Refusal::Invalid(reason));
        }
        Ok(agreed)
    }

    /// Rebuilds the declared row counts of an external run's offers.
    pub(super) fn resume_external_offers(&mut self) -> Result<(), crate::store::StoreError> {
        for (site, bytes) in self.store.offers(&self.run.id, AgreementStep::External)? {
            let offer = pb::ExternalOffer::decode(bytes.as_slice())
                .map_err(|e| crate::store::StoreError::Damaged(e.to_string()))?;
            // Stored offers were checked when they came.
            if let Ok(parsed) = convert::external_offer_from_pb(&site, &offer) {
                let declared = trust::Declared {
                    train: parsed.train_rows,
                    test: parsed.test_rows,
                };
                self.declared.insert(site, declared);
            }
        }
        Ok(())
    }
}

/// Why `site`'s layout is refused: it differs from `first`'s.
fn layout_refusal(site: &str, first: &str, difference: &tessera_core::CoreError) -> String {
    format!(
        "'{site}': its learner's parameters have another layout than those of '{first}', the \
         first site by name, which start the global model ({difference}); every site's model \
         must have the same tensors, names and shapes"
    )
}
