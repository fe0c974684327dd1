//! A participant whose model and rows live outside Tessera: an
//! [`ExternalLearner`] (a Python model, say) does the site's local training
//! and evaluation through the engine's `Site::external`, and everything
//! else is the participant's as with data: TLS, joining, heartbeats,
//! reconnecting, withdrawing, secure aggregation, compression and error
//! feedback. The agreement is one step (protocol 1.10, `external-learners`):
//! the site offers its declared row counts and its learner's initial
//! parameters, and hears the layout the federation agreed (the first
//! site's by name), which must be its own. Under local DP the learner runs
//! DP-SGD itself with what the site hands it, seeded from a key the site
//! draws from the operating system; the site accounts every training
//! against its budget, refuses up front a run that would exceed it, and
//! refuses a report that would understate what was spent.

use std::sync::Arc;

use tessera_core::{ParameterSet, ParticipantId};
use tessera_data::{Agreement, Dataset, Scaler};
use tessera_engine::{ExternalLearner, Site, external::check_initial};
use tessera_proto::convert;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, agree_reply};
use tonic::transport::Channel;

use crate::supervisor::Failure;
use crate::{
    ParticipantConfig, ParticipantError, ParticipantSummary, Ready, cause, client, results,
};

/// Why a participant with data cannot take part in a run whose model is external.
pub(crate) const NEEDS_LEARNER: &str = "the coordinator's plan has an external model \
     (kind = \"external\" in [model]): each site trains its own learner, so this site joins \
     with one (tessera_participant::run_external, or the Python package's run_participant), \
     not with data";

/// A site whose model and rows live outside Tessera.
pub struct ExternalSite {
    /// The site's model: its initial parameters, local training and evaluation.
    pub learner: Box<dyn ExternalLearner>,
    /// The training rows the learner trains on: declared to the coordinator,
    /// they bound every example count its training reports (under secure
    /// aggregation or sums-only metrics, only their next power of two leaves).
    pub train_rows: u64,
    /// The test rows the learner evaluates on, declared likewise.
    pub test_rows: u64,
}

/// What an external site takes home from a run.
#[derive(Debug, Clone)]
pub struct ExternalResults {
    /// The run it took part in.
    pub run_id: String,
    /// The last global model it evaluated (after the last round: the
    /// federation's final model), and its round.
    pub model: Option<(u32, Arc<ParameterSet>)>,
    /// With local DP: the epsilon this site spent over its trainings (its
    /// own ledger's count, not the coordinator's) and its delta.
    pub local_epsilon: Option<(f64, f64)>,
    /// The trainings this site ran.
    pub trainings: usize,
}

/// The external site before it is given to its run, with its initial
/// parameters once asked (a reconnection does not ask again).
pub(crate) struct Slot {
    site: Option<ExternalSite>,
    initial: Option<ParameterSet>,
    /// The run the learner was given to.
    given_to: Option<String>,
}

/// Takes part in the coordinator's run with an external learner until it is
/// over, as [`crate::run`] does with data; `config.data`, `plan_dir`,
/// `share_levels` and `max_memory_bytes` are not used. Returns what the
/// participant did and, where the run reached training, its results.
pub async fn run_external(
    config: ParticipantConfig,
    site: ExternalSite,
) -> Result<(ParticipantSummary, Option<ExternalResults>), ParticipantError> {
    if config.data.is_some() {
        return Err(ParticipantError::Config(
            "an external learner holds its own rows: give no data file".into(),
        ));
    }
    let slot = Slot {
        site: Some(site),
        initial: None,
        given_to: None,
    };
    let (summary, ready) = crate::take_part(&config, Some(slot)).await?;
    let results = ready.map(|ready| ExternalResults {
        model: ready.takeaway.last_model(),
        local_epsilon: ready.takeaway.local_epsilon(&config.site),
        trainings: ready.takeaway.trainings(),
        run_id: ready.run_id,
    });
    Ok((summary, results))
}

/// Agrees the external model's layout with the other sites and sets the
/// site up with its learner.
pub(crate) async fn prepare(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
    slot: &mut Slot,
) -> Result<Ready, Failure> {
    let local_error = |e: String| Failure::Fatal(ParticipantError::Local(e));
    let plan_refused =
        |e: String| Failure::Fatal(ParticipantError::Stop(cause::Cause::PlanRefused(e)));
    let plan = crate::coordinators_plan(config, welcome)?;
    if !plan.model.kind.is_external() {
        return Err(plan_refused(format!(
            "the coordinator's plan has a built-in model (kind = \"{}\" in [model]): its sites \
             join with their data, not with an external learner",
            format!("{:?}", plan.model.kind).to_lowercase()
        )));
    }
    if let Some(run) = &slot.given_to {
        return Err(local_error(format!(
            "this site's learner took part in run {run}; the coordinator now runs {}: start \
             the participant again for a new run",
            welcome.run_id
        )));
    }
    let Some(site) = slot.site.as_mut() else {
        return Err(local_error("no external learner".into()));
    };
    let initial = match &slot.initial {
        Some(initial) => initial.clone(),
        None => {
            let initial = site
                .learner
                .parameters()
                .and_then(|p| check_initial(&p).map(|()| p))
                .map_err(|e| local_error(format!("this site's learner: {e}")))?;
            slot.initial = Some(initial.clone());
            initial
        }
    };
    // Where the plan keeps counts from the coordinator (secure aggregation,
    // sums of the metrics), only their magnitude leaves: the next power of two.
    let hide = plan.secure_aggregation.enabled || plan.privacy.site_metrics.sums_only();
    let offer = convert::external_offer_to_pb(
        tessera_data::declared_rows(site.train_rows, hide),
        tessera_data::declared_rows(site.test_rows, hide),
        &initial,
    );
    // What the coordinator would refuse is refused here first, with the same words.
    convert::external_offer_from_pb(&config.site, &offer)
        .map_err(|e| local_error(format!("this site's offer: {e}")))?;
    let agreed = match client::agree(
        client,
        &config.site,
        pb::agree_request::Offer::External(offer),
    )
    .await?
    {
        agree_reply::Result::External(agreed) => agreed,
        _ => return Err(Failure::Retry("agreement out of order".into())),
    };
    let agreed = convert::external_agreement_from_pb(agreed, &initial).map_err(|e| {
        let why = e.to_string();
        tracing::error!(%why, "layout refused");
        local_error(why)
    })?;
    tracing::info!(
        site = %config.site,
        from = %agreed.initial_site,
        tensors = agreed.layout.len(),
        "external model agreed"
    );
    let Some(site) = slot.site.take() else {
        return Err(local_error("no external learner".into()));
    };
    slot.given_to = Some(welcome.run_id.clone());
    let train_rows = usize::try_from(site.train_rows)
        .map_err(|_| local_error(format!("{} training rows", site.train_rows)))?;
    // Under local DP, the seeds the learner gets derive from this key, from
    // the operating system, which never leaves the site.
    let key = || crate::client::os_key().map_err(tessera_engine::EngineError::State);
    let site = Site::external(
        &plan,
        ParticipantId::new(&config.site),
        site.learner,
        Some(train_rows),
        key,
    )
    .map_err(|e| plan_refused(e.to_string()))?;
    crate::ledger::check_local_budget(&plan, &config.site, &site, train_rows)?;
    let no_rows = Agreement {
        columns: Vec::new(),
        encodings: Vec::new(),
        classes: Vec::new(),
    };
    let no_scaling = Scaler {
        mean: Vec::new(),
        scale: Vec::new(),
    };
    let takeaway = results::Takeaway::new(&plan, no_rows, no_scaling);
    let empty = Dataset::empty(0);
    let ready = Ready::new(
        config,
        welcome,
        plan,
        site,
        (empty.clone(), empty),
        takeaway,
    )?;
    ready.check_run(train_rows)?;
    Ok(ready)
}
