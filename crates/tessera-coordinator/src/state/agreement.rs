//! The data agreement: each site offers its column kinds (step 1), its
//! levels with its declared row counts (step 2) and, for federation-scope
//! standardisation, its feature statistics (step 3); each step closes once
//! every expected site has offered, and its result is stored with the run.
//! One odd offer is set aside with the reason, not the federation's.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use tessera_core::ParticipantId;
use tessera_data::{
    Agreement, ColumnKinds, KindsOffer, LevelsOffer, agree_kinds, agree_vocabulary,
};
use tessera_engine::PlanBuild;
use tessera_engine::{EngineConfig, RoundEngine};
use tessera_proto::{convert, pb};

use super::{Federation, Phase, Refusal, Training, trust, unavailable};
use crate::store::{AgreementStep, Offers, StoreError};

impl Federation {
    pub(super) fn quorum_of_offers(
        &self,
        step: AgreementStep,
    ) -> Result<Option<Offers>, StoreError> {
        let offers = self.store.offers(&self.run.id, step)?;
        let offered: BTreeSet<&str> = offers.iter().map(|(s, _)| s.as_str()).collect();
        let complete = self.roster.expected().complete(&offered);
        Ok(complete.then_some(offers))
    }

    /// Agreement step 1: the site's column kinds. Returns the agreed kinds once
    /// every expected site has offered.
    pub fn offer_kinds(
        &mut self,
        site: &str,
        offer: pb::KindsOffer,
    ) -> Result<Option<ColumnKinds>, Refusal> {
        self.require_joined(site)?;
        self.refuse_data_offer(site, "agree-kinds")?;
        self.touch(site);
        if let Some(reason) = self.odd_offers.remove(site) {
            // Its offer was set aside; it hears why once, and may offer again.
            return Err(Refusal::Invalid(reason));
        }
        if let Some(kinds) = &self.kinds {
            return Ok(Some(kinds.clone()));
        }
        let parsed = convert::kinds_offer_from_pb(site, offer.clone())
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.store
            .put_offer(
                &self.run.id,
                AgreementStep::Kinds,
                site,
                &offer.encode_to_vec(),
            )
            .map_err(unavailable)?;
        let _ = parsed;
        if self.is_aggregator() {
            // The members' merged offer goes up; the parent's kinds come back.
            self.version += 1;
            return Ok(None);
        }
        let Some(offers) = self
            .quorum_of_offers(AgreementStep::Kinds)
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let offers: Vec<KindsOffer> = offers
            .into_iter()
            .filter_map(|(s, bytes)| {
                let offer = pb::KindsOffer::decode(bytes.as_slice()).ok()?;
                convert::kinds_offer_from_pb(&s, offer).ok()
            })
            .collect();
        // One site whose columns differ from the rest is refused, not the
        // federation: its offer is set aside and the others wait.
        let odd = trust::odd_kinds_offers(&offers);
        if !odd.is_empty() {
            for (odd_site, reason) in odd {
                self.store
                    .delete_offer(&self.run.id, AgreementStep::Kinds, &odd_site)
                    .map_err(unavailable)?;
                self.refuse_report(&odd_site, "agree-kinds", &reason);
                self.odd_offers.insert(odd_site, reason);
            }
            self.version += 1;
            return match self.odd_offers.remove(site) {
                Some(reason) => Err(Refusal::Invalid(reason)),
                None => Ok(None),
            };
        }
        let kinds =
            agree_kinds(&self.plan.data, &offers).map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.store
            .put_agreement(
                &self.run.id,
                AgreementStep::Kinds,
                &convert::kinds_to_pb(&kinds).encode_to_vec(),
            )
            .map_err(unavailable)?;
        self.audit(site, "agree-kinds", "closed", &kinds.columns.join(","));
        self.kinds = Some(kinds.clone());
        self.version += 1;
        Ok(Some(kinds))
    }

    /// Agreement step 2: the site's sets of levels. Returns the agreement once
    /// every expected site has offered; the first round can then open.
    pub fn offer_levels(
        &mut self,
        site: &str,
        offer: pb::LevelsOffer,
    ) -> Result<Option<Agreement>, Refusal> {
        self.require_joined(site)?;
        self.refuse_data_offer(site, "agree-levels")?;
        self.touch(site);
        // Every site declares its row counts, also one that comes after the
        // agreement: they bound what it reports for the rest of the run.
        let declared = trust::Declared::of(&offer).map_err(|reason| {
            self.refuse_report(site, "agree-levels", &reason);
            Refusal::Invalid(reason)
        })?;
        self.declare(
            site,
            declared,
            AgreementStep::Levels,
            "agree-levels",
            &offer.encode_to_vec(),
        )?;
        if let Some(agreement) = &self.agreement {
            return Ok(Some(self.agreement_for(site, agreement.clone())));
        }
        let Some(kinds) = self.kinds.clone() else {
            return Err(Refusal::Invalid("offer the column kinds first".into()));
        };
        if self.is_aggregator() {
            self.version += 1;
            return Ok(None);
        }
        let Some(offers) = self
            .quorum_of_offers(AgreementStep::Levels)
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let offers: Vec<LevelsOffer> = offers
            .into_iter()
            .filter_map(|(s, bytes)| {
                let offer = pb::LevelsOffer::decode(bytes.as_slice()).ok()?;
                Some(convert::levels_offer_from_pb(&s, offer))
            })
            .collect();
        let agreement = match self.plan.multitask {
            // A task whose sites' classes do not fit its declared kind ends
            // the run: no offer can change them. Other refusals are the
            // offer's, as without [multitask].
            Some(_) => self
                .agree_tasks(&kinds, &offers)
                .map_err(|(reason, ends)| {
                    if ends && self.stopped.is_none() {
                        tracing::error!(%reason, "the run cannot start");
                        self.audit(site, "agree-vocabulary", "refused", &reason);
                        self.stopped = Some(reason.clone());
                    }
                    Refusal::Invalid(reason)
                })?,
            None => agree_vocabulary(&self.plan.data, &kinds, &offers)
                .map_err(|e| Refusal::Invalid(e.to_string()))?,
        };
        self.close_vocabulary(site, &agreement)?;
        Ok(Some(self.agreement_for(site, agreement)))
    }

    /// The vocabulary is agreed: stores it with the initial model, builds
    /// the engine and opens training.
    pub(super) fn close_vocabulary(
        &mut self,
        site: &str,
        agreement: &Agreement,
    ) -> Result<(), Refusal> {
        // The model's copies here must fit before any is built (under
        // multi-task every head: as one of all the tasks' classes).
        let classes = match self.task_class_counts().iter().sum::<usize>() {
            0 => agreement.classes.len(),
            all => all,
        };
        let shape = (
            agreement.feature_names().len(),
            classes,
            self.roster.joined().len(),
        );
        let limit = tessera_engine::available_memory()
            .map(|b| (b as f64, "the coordinator machine's available memory"));
        if let Err(e) =
            self.plan
                .check_memory(tessera_engine::MemoryRole::Coordinator, shape, limit)
        {
            let reason = e.to_string();
            if self.stopped.is_none() {
                tracing::error!(%reason, "the run cannot start");
                self.audit(site, "agree-vocabulary", "refused", &reason);
                self.stopped = Some(reason.clone());
            }
            return Err(Refusal::Invalid(reason));
        }
        let initial = match self.initial_model(agreement) {
            Ok(initial) => initial,
            Err(reason) => {
                if self.stopped.is_none() {
                    tracing::error!(%reason, "the run cannot start");
                    self.audit(site, "agree-vocabulary", "refused", &reason);
                    self.stopped = Some(reason.clone());
                }
                return Err(Refusal::Invalid(reason));
            }
        };
        let now = self.now();
        // The initial model and the vocabulary are stored together, or neither.
        let run = self.run.id.as_str();
        let encoded = self.agreement_to_store(agreement).encode_to_vec();
        self.store
            .write(&mut |tx| {
                tx.put_model(run, 0, &initial, now)?;
                tx.put_agreement(run, AgreementStep::Levels, &encoded)
            })
            .map_err(unavailable)?;
        if let Some(continued) = &self.continued {
            let from = format!("continued from {}", continued.from);
            self.audit(site, "initial-model", "continued", &from);
        }
        let closed = format!("{} features", agreement.feature_names().len());
        self.open_training(site, agreement, initial, ("agree-vocabulary", &closed))
    }

    /// The agreement is stored with the initial model: builds the engine
    /// from `initial` and opens training, audited as `closed` says.
    pub(super) fn open_training(
        &mut self,
        site: &str,
        agreement: &Agreement,
        initial: tessera_core::ParameterSet,
        closed: (&str, &str),
    ) -> Result<(), Refusal> {
        if self.dry_run_agreed(agreement.feature_names().len()) {
            self.agreement = Some(agreement.clone());
            return Ok(());
        }
        if self.plan.federation.mode == tessera_engine::Mode::Async {
            let engine = tessera_engine::BufferedEngine::new(
                &self.plan,
                initial.clone(),
                self.roster.joined().len(),
            )
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
            self.training = Training::Async(Some(Box::new(engine)));
            self.agreement = Some(agreement.clone());
            self.phase = Phase::Training;
            self.version += 1;
            self.advance();
            return Ok(());
        }
        let strategy = self
            .plan
            .strategy()
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let mut engine = self
            .protect(RoundEngine::new(
                EngineConfig::from_plan(&self.plan),
                strategy,
                initial.clone(),
            ))
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        for site in self.roster.joined() {
            engine.register(ParticipantId::new(site.as_str()));
        }
        self.downlink = self.new_downlink(Arc::clone(engine.global()));
        self.training.set_rounds(Some(engine));
        self.audit(site, closed.0, "closed", closed.1);
        self.agreement = Some(agreement.clone());
        self.phase = Phase::Training;
        self.version += 1;
        self.advance();
        Ok(())
    }

    /// Agreement step 3 (federation-scope standardisation): the site's
    /// feature statistics. Returns the federation's, merged in site order,
    /// once every expected site has offered.
    pub fn offer_statistics(
        &mut self,
        site: &str,
        offer: pb::FeatureStatistics,
    ) -> Result<Option<tessera_data::FeatureStatistics>, Refusal> {
        self.require_joined(site)?;
        self.refuse_data_offer(site, "agree-statistics")?;
        self.touch(site);
        let Some(n_features) = self.agreement.as_ref().map(|a| a.feature_names().len()) else {
            return Err(Refusal::Invalid("agree the vocabulary first".into()));
        };
        if let Some(bytes) = self
            .store
            .agreement(&self.run.id, AgreementStep::Statistics)
            .map_err(unavailable)?
        {
            let merged = pb::FeatureStatistics::decode(bytes.as_slice())
                .map_err(|e| Refusal::Invalid(e.to_string()))?;
            return convert::statistics_from_pb(merged, n_features)
                .map(Some)
                .map_err(|e| Refusal::Invalid(e.to_string()));
        }
        let own = convert::statistics_from_pb(offer.clone(), n_features)
            .map_err(|e| e.to_string())
            .and_then(|stats| self.check_statistics(site, &stats))
            .map_err(|reason| {
                self.refuse_report(site, "agree-statistics", &reason);
                Refusal::Invalid(reason)
            });
        own?;
        self.store
            .put_offer(
                &self.run.id,
                AgreementStep::Statistics,
                site,
                &offer.encode_to_vec(),
            )
            .map_err(unavailable)?;
        if self.is_aggregator() {
            self.version += 1;
            return Ok(None);
        }
        let Some(offers) = self
            .quorum_of_offers(AgreementStep::Statistics)
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let parts = offers
            .into_iter()
            .map(|(_, bytes)| {
                let stats = pb::FeatureStatistics::decode(bytes.as_slice())
                    .map_err(|e| Refusal::Invalid(e.to_string()))?;
                convert::statistics_from_pb(stats, n_features)
                    .map_err(|e| Refusal::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let merged = tessera_data::FeatureStatistics::merge_all(n_features, &parts);
        self.store
            .put_agreement(
                &self.run.id,
                AgreementStep::Statistics,
                &convert::statistics_to_pb(&merged).encode_to_vec(),
            )
            .map_err(unavailable)?;
        self.audit(
            site,
            "agree-statistics",
            "closed",
            &format!("{} training rows", merged.n),
        );
        self.version += 1;
        Ok(Some(merged))
    }
}
