//! A simulator shard (`tessera shard`): an aggregator of the plan's tree
//! toward its parent, its member sites simulated in this process
//! ([`tessera_sim::Shard`]) instead of served over gRPC. A simulation spans
//! several machines by running one shard on each under a deployed
//! coordinator: the deployment's runtime carries the rounds between the
//! shards (join, the agreement, tasks, updates, evaluations), not a
//! scheduler of its own.
//!
//! The shard reads its members' rows (the plan's data, or `--data`, a copy
//! of the plan's one file holding at least theirs), offers their merged
//! column kinds, levels and (federation-wide standardisation) statistics to
//! its parent as an aggregator does, prepares the rows with the agreed
//! layout, then answers the parent's tasks: a fit task is its round over
//! its members, as the single-process simulation runs it, and its weighted
//! mean goes up carrying their examples; an evaluation task is each
//! member's evaluation, sent up with their pooled one. While a round
//! trains it sends the parent heartbeats.
//!
//! *Invariant:* the shard keeps nothing the parent cannot send again: a
//! task re-sent after a lost connection is computed again, to the same bits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_data::{
    FeatureStatistics, FederatedData, KindsOffer, LevelsOffer, LocalSite, ScaleScope, Scaler,
};
use tessera_engine::Plan;
use tessera_learn::Evaluation;
use tessera_participant::ParticipantError;
use tessera_participant::client;
use tessera_participant::supervisor::{Failure, Progress, Retry, Stopped, supervise};
use tessera_proto::convert;
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, agree_reply};
use tessera_sim::Shard;
use tonic::transport::Channel;

use crate::{AggregatorError, draw_session, empty_round, evaluation_up, fatal, next_task};

/// How to run a simulator shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The parent's URL, e.g. `http://127.0.0.1:7000`.
    pub upstream: String,
    /// This shard's name: an aggregator of the plan's `[[topology.groups]]`.
    pub name: String,
    /// A file replacing the plan's one file of every site's rows (holding
    /// at least this shard's members'); `None`: the plan's own data.
    pub data: Option<PathBuf>,
    /// Where the plan's relative paths start.
    pub plan_dir: PathBuf,
    /// Mutual TLS toward the parent (a site's files, naming this shard).
    pub upstream_tls: Option<tessera_tls::TlsFiles>,
    /// The parent's name in its certificate (default: the URL's host).
    pub upstream_domain: Option<String>,
    /// Longest wait between reconnection attempts to the parent.
    pub max_backoff: Duration,
    /// Give up after this long without reaching the parent.
    pub give_up_after: Duration,
}

/// What a shard did, once its parent's run is over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSummary {
    /// Its member sites.
    pub sites: usize,
    /// Rounds it trained and sent up (a round sent again counts again).
    pub rounds: u32,
    /// Evaluations it sent up.
    pub evaluations: u32,
}

struct State {
    /// This process, told apart from another shard of the same name.
    process: String,
    /// The shard, opened under the parent's plan (its text).
    shard: Option<(Arc<Shard>, String)>,
    summary: ShardSummary,
}

/// Runs the shard until its parent's run is over.
pub async fn run_shard(config: ShardConfig) -> Result<ShardSummary, AggregatorError> {
    let endpoint = client::endpoint(
        &config.upstream,
        config.upstream_tls.as_ref(),
        config.upstream_domain.as_deref(),
    )?;
    let mut state = State {
        process: draw_session()?,
        shard: None,
        summary: ShardSummary::default(),
    };
    let ended = supervise(
        &Retry::reconnect(config.max_backoff, config.give_up_after),
        &mut state,
        async |state: &mut State, progress| session(&config, &endpoint, state, progress).await,
        |_, reason, backoff| tracing::warn!(%reason, ?backoff, "parent connection lost; retrying"),
    )
    .await;
    match ended {
        Ok(()) => Ok(state.summary),
        Err(Stopped::Fatal(e)) => Err(e.into()),
        Err(Stopped::GaveUp { after, reason }) => Err(ParticipantError::Unreachable(format!(
            "gave up: the parent has been unreachable for {after:?} (--give-up-after): {reason}"
        ))
        .into()),
    }
}

async fn session(
    config: &ShardConfig,
    endpoint: &client::Remote,
    state: &mut State,
    progress: &Progress,
) -> Result<(), Failure> {
    let (mut parent, welcome) = client::join(
        endpoint,
        &config.upstream,
        &config.name,
        Some(state.process.as_str()),
    )
    .await?;
    progress.made();
    let shard = match &state.shard {
        Some((shard, plan)) if *plan == welcome.plan_toml => Arc::clone(shard),
        Some(_) => {
            // A parent restarted under another plan (or run) would get no
            // agreement from this shard, or training under the old plan.
            return Err(fatal(
                "the parent's plan changed since this shard joined: start the shard again",
            ));
        }
        None => {
            let shard = Arc::new(prepare(config, &mut parent, &welcome).await?);
            state.summary.sites = shard.sites().len();
            state.shard = Some((Arc::clone(&shard), welcome.plan_toml.clone()));
            shard
        }
    };
    let mut up = Up {
        name: &config.name,
        remote: endpoint,
        parent: &mut parent,
        beat: client::heartbeat_interval(&welcome),
        withdraw: client::can_withdraw(&welcome),
        shard,
    };
    up.tasks(&mut state.summary).await
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| fatal(format!("the shard's work crashed: {e}")))?
        .map_err(fatal)
}

/// Reads the members' rows, runs the agreement with the parent, prepares
/// the rows and opens the shard.
async fn prepare(
    config: &ShardConfig,
    parent: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
) -> Result<Shard, Failure> {
    let plan = Plan::from_toml(&welcome.plan_toml, "the parent's plan").map_err(fatal)?;
    let name = config.name.clone();
    let members = Shard::members(&plan, &name).map_err(fatal)?;
    if members.len() > convert::MAX_SITE_EVALUATIONS {
        return Err(fatal(format!(
            "shard '{name}' has {} sites: its evaluations go up in one message of at most {} \
             sites; split it into more shards",
            members.len(),
            convert::MAX_SITE_EVALUATIONS
        )));
    }
    let (data_config, path, dir) = (
        plan.data.clone(),
        config.data.clone(),
        config.plan_dir.clone(),
    );
    let mut sites = blocking(move || {
        tessera_data::read_member_sites(
            &data_config,
            &members,
            path.as_deref(),
            &dir,
            &tessera_data::Filesystem,
        )
        .map_err(|e| e.to_string())
    })
    .await?;
    let rows: usize = sites.iter().map(|s| s.summary().n_train).sum();
    tracing::info!(shard = %name, sites = sites.len(), train_rows = rows, "members' rows read");
    // Step 1: the members' column kinds, merged.
    let offers: Vec<KindsOffer> = sites.iter().map(LocalSite::kinds_offer).collect();
    let merged = KindsOffer::merge(&name, &offers).map_err(fatal)?;
    let offer = pb::agree_request::Offer::Kinds(convert::kinds_offer_to_pb(&merged));
    let kinds = match client::agree(parent, &name, offer).await? {
        agree_reply::Result::Kinds(k) => convert::kinds_from_pb(k).map_err(fatal)?,
        _ => return Err(Failure::Retry("agreement out of order".into())),
    };
    // Step 2: their levels and classes, their row counts as each site
    // would declare them.
    let hide = plan.secure_aggregation.enabled || plan.privacy.site_metrics.sums_only();
    let mut offers = Vec::with_capacity(sites.len());
    for site in &mut sites {
        let mut offer = site.levels_offer(&plan.data, &kinds).map_err(fatal)?;
        offer.train_rows = tessera_data::declared_rows(offer.train_rows, hide);
        offer.test_rows = tessera_data::declared_rows(offer.test_rows, hide);
        offers.push(offer);
    }
    let merged = LevelsOffer::merge(&name, kinds.columns.len(), &offers);
    let offer = pb::agree_request::Offer::Levels(convert::levels_offer_to_pb(&merged));
    let agreement = match client::agree(parent, &name, offer).await? {
        agree_reply::Result::Agreement(a) => convert::agreement_from_pb(a).map_err(fatal)?,
        _ => return Err(Failure::Retry("agreement out of order".into())),
    };
    let mut prepared = Vec::with_capacity(sites.len());
    let mut summary = Vec::with_capacity(sites.len());
    for site in sites {
        let (data, counts) = site.prepare(&plan.data, &agreement).map_err(fatal)?;
        prepared.push(data);
        summary.push(counts);
    }
    // Step 3 (federation-wide standardisation): their statistics, merged
    // in site order as an aggregator merges its members'.
    let standardize = &plan.data.standardize;
    if standardize.enabled && standardize.scope == ScaleScope::Federation {
        let n = agreement.feature_names().len();
        let parts: Vec<FeatureStatistics> = prepared
            .iter()
            .map(|d| FeatureStatistics::of_features(d.raw_train()))
            .collect();
        let own = convert::statistics_to_pb(&FeatureStatistics::merge_all(n, &parts));
        let offer = pb::agree_request::Offer::Statistics(own);
        let merged = match client::agree(parent, &name, offer).await? {
            agree_reply::Result::Statistics(s) => {
                convert::statistics_from_pb(s, n).map_err(fatal)?
            }
            _ => return Err(Failure::Retry("agreement out of order".into())),
        };
        let scaler = Scaler::from_statistics(&merged, standardize, &agreement.indicators());
        for data in &mut prepared {
            data.rescale(scaler.clone());
        }
    }
    let data = FederatedData {
        feature_names: agreement.feature_names(),
        task: agreement.task(),
        sites: prepared,
        summary,
        agreement,
    };
    let shard = blocking(move || Shard::new(&plan, &name, data).map_err(|e| e.to_string())).await?;
    tracing::info!(shard = %config.name, sites = shard.sites().len(), "shard ready");
    Ok(shard)
}

/// The connection to the parent and the simulated members.
struct Up<'a> {
    name: &'a str,
    remote: &'a client::Remote,
    parent: &'a mut FederationClient<Channel>,
    beat: Option<Duration>,
    withdraw: bool,
    shard: Arc<Shard>,
}

impl Up<'_> {
    /// Runs `work` on a blocking thread, telling the parent every
    /// heartbeat interval that this shard is at round `round`'s work. A
    /// heartbeat that fails does not abandon the work (a reconnection would
    /// start the same work again beside it): the next call to the parent
    /// fails instead, once the work is done.
    async fn at_work<T: Send + 'static>(
        &mut self,
        round: u32,
        work: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, Failure> {
        let mut done = std::pin::pin!(blocking(work));
        let Some(beat) = self.beat else {
            return done.await;
        };
        loop {
            tokio::select! {
                result = &mut done => return result,
                () = tokio::time::sleep(beat) => {
                    let request = pb::HeartbeatRequest {
                        site: self.name.to_string(),
                        round,
                    };
                    match self.parent.heartbeat(request).await {
                        Ok(reply) if !reply.get_ref().keep_going => tracing::warn!(
                            round,
                            "the parent stopped waiting for this round; finishing it all the same"
                        ),
                        Ok(_) => {}
                        Err(status) => tracing::warn!(
                            round,
                            error = %status.message(),
                            "heartbeat failed; the work goes on"
                        ),
                    }
                }
            }
        }
    }

    /// The parent's tasks until its run is over.
    async fn tasks(&mut self, summary: &mut ShardSummary) -> Result<(), Failure> {
        loop {
            let Some((_, header, mut stream)) =
                next_task(self.parent, self.name, self.remote).await?
            else {
                return Ok(());
            };
            let (global, _) = client::receive_parameters(&header, &mut stream, None).await?;
            let global = Arc::new(global);
            let round = header.round;
            let shard = Arc::clone(&self.shard);
            match header.kind() {
                pb::TaskKind::Fit => {
                    let answer = self
                        .at_work(round, move || {
                            shard.fit(round, global).map_err(|e| e.to_string())
                        })
                        .await?;
                    for error in &answer.errors {
                        tracing::warn!(round, %error, "a member's training failed");
                    }
                    self.send_up(round, answer.update).await?;
                    summary.rounds += 1;
                }
                pb::TaskKind::Evaluate => {
                    let sites = self
                        .at_work(round, move || {
                            shard.evaluate(&global).map_err(|e| e.to_string())
                        })
                        .await?;
                    let pooled = Evaluation::pool(sites.iter().map(|(_, e)| e));
                    if evaluation_up(self.parent, self.name, round, &pooled, &sites).await? {
                        summary.evaluations += 1;
                    }
                }
                pb::TaskKind::Analyze
                | pb::TaskKind::Unspecified
                | pb::TaskKind::Canary
                | pb::TaskKind::Serve => {
                    return Err(Failure::Retry("task of unknown kind".into()));
                }
            }
        }
    }

    /// Sends round `round`'s mean up, or withdraws from the parent's round
    /// when it closed here without one.
    async fn send_up(
        &mut self,
        round: u32,
        update: Option<tessera_core::Update>,
    ) -> Result<(), Failure> {
        let Some(update) = update else {
            return empty_round(self.parent, self.name, round, self.withdraw, self.beat).await;
        };
        let reply = client::send_update(
            self.name,
            self.parent,
            round,
            &update,
            tessera_compress::Codec::NONE,
            None,
            client::Extras::default(),
        )
        .await?;
        if reply.accepted {
            tracing::info!(
                round,
                examples = update.n_examples,
                "update accepted by the parent"
            );
        } else {
            tracing::warn!(round, reason = %reply.reason, "update refused by the parent");
        }
        Ok(())
    }
}
