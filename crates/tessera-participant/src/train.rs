//! Local training at a participant, while heartbeats tell the coordinator
//! the site is at work.

use std::sync::Arc;
use std::time::Duration;

use tessera_engine::{FitTask, PlanBuild};
use tessera_proto::pb;
use tessera_proto::pb::federation_client::FederationClient;
use tonic::transport::Channel;

use crate::supervisor::Failure;
use crate::{ParticipantConfig, ParticipantError, Ready, client};

/// Trains on the site's rows while telling the coordinator it is at work.
/// `None` when the coordinator stopped waiting (the round closed).
pub(crate) async fn train(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    state: &mut Ready,
    task: FitTask,
) -> Result<Option<tessera_core::Update>, Failure> {
    if let Some(why) = config
        .continual
        .as_ref()
        .and_then(|c| c.check_start(task.round, &task.global).err())
    {
        tracing::error!(round = task.round, %why, "refusing to train");
        if state.withdraw {
            let shown = tessera_proto::shown(&why, tessera_proto::MAX_WITHDRAW_REASON);
            if let Err(status) =
                client::withdraw(client, &config.site, task.round, &shown, true).await
            {
                tracing::warn!(%status, "could not tell the coordinator");
            }
        }
        return Err(Failure::Fatal(ParticipantError::Local(why)));
    }
    let mut site = state
        .site
        .take()
        .ok_or_else(|| Failure::Retry("site busy".into()))?;
    let train = Arc::clone(&state.train);
    let round = task.round;
    // Under secure aggregation the update leaves as a masked input: pause there.
    let pause = if state.secure {
        Duration::ZERO
    } else {
        config.pause_before_update
    };
    // Under `[contribution]`: the test loss's gradient at the round's
    // start as served, over the plan's first rows, for the coordinator's
    // attribution (taken before training moves the learner).
    let gradient_of = if state.plan.contribution.is_off() {
        None
    } else {
        let served = state
            .plan
            .served(&task.global)
            .map_err(|e| Failure::Fatal(ParticipantError::Local(e.to_string())))?
            .into_owned();
        let rows = match state.plan.contribution.rows_per_site {
            0 => usize::MAX,
            k => k,
        };
        Some((served, Arc::clone(&state.test), rows))
    };
    let mut work = tokio::task::spawn_blocking(move || {
        let gradient = gradient_of
            .map(|(served, test, rows)| site.test_gradient(&served, &test, rows))
            .transpose();
        let started = std::time::Instant::now();
        let update = gradient.and_then(|g| Ok((site.fit(&task, &train)?, g)));
        let seconds = started.elapsed().as_secs_f64();
        // Fault injection: a slow site (it keeps saying it is at work).
        std::thread::sleep(pause);
        (site, update, seconds)
    });
    let mut keep_going = true;
    let beat = state.heartbeat.unwrap_or(Duration::from_secs(3600));
    let (site, update, seconds) = loop {
        tokio::select! {
            done = &mut work => break done.map_err(|e| Failure::Fatal(ParticipantError::Local(format!("training crashed: {e}"))))?,
            () = tokio::time::sleep(beat), if state.heartbeat.is_some() => {
                match client.heartbeat(pb::HeartbeatRequest { site: config.site.clone(), round }).await {
                    Ok(reply) => keep_going &= reply.into_inner().keep_going,
                    Err(status) => tracing::warn!(%status, "heartbeat failed"),
                }
            }
        }
    };
    if update.is_ok() {
        // Counted on this site's own disk before the update leaves; past a
        // budget by that count, this site stops, saying why.
        if let Err(why) = state
            .site_ledger
            .record_training(round, site.last_dp_event())
        {
            state.site = Some(site);
            tracing::error!(round, %why, "this site's privacy ledger refuses the round's update");
            let reason = format!("this site's privacy ledger refuses round {round}: {why}");
            if state.withdraw {
                let shown = tessera_proto::shown(&reason, tessera_proto::MAX_WITHDRAW_REASON);
                if let Err(status) =
                    client::withdraw(client, &config.site, round, &shown, true).await
                {
                    tracing::warn!(%status, "could not tell the coordinator");
                }
            }
            return Err(Failure::Fatal(ParticipantError::Local(reason)));
        }
        if let Some(file) = &state.state_file
            && let Err(why) = file.save(round, &site)
        {
            // An older state would pass off as the latest after a restart.
            let removed = file.remove();
            tracing::error!(
                round,
                %why,
                removed,
                "this site's personal state could not be saved: a restart would start its \
                 personal model afresh"
            );
        }
        if state.takeaway.first_training().is_none()
            && state.takeaway.restored.is_none()
            && round > 1
            && state.plan.federation.strategy.needs().personal
        {
            tracing::warn!(
                round,
                "this site's personal model starts at round {round}: this process did not train \
                 the rounds before it (a late join, or a restart without its --local-state file)"
            );
        }
        state
            .takeaway
            .trained(&config.site, round, site.last_dp_event());
    }
    state.site = Some(site);
    // Not under secure aggregation, where the site's row counts are hidden
    // and the time would hint at them (elsewhere each update's header
    // carries its examples exactly); never beyond what a coordinator takes.
    state.train_seconds =
        (!state.secure && seconds <= tessera_proto::convert::MAX_TRAIN_SECONDS).then_some(seconds);
    let update = match update {
        Ok((update, gradient)) => {
            state.test_gradient = gradient;
            update
        }
        Err(e) => {
            // This site cannot go on: it says so, so that the round (and
            // the rounds after it) do not wait for it.
            if state.withdraw {
                let reason = format!("local training failed: {e}");
                match client::withdraw(client, &config.site, round, &reason, true).await {
                    Ok(_) => tracing::warn!(round, %reason, "withdrew from the run"),
                    Err(status) => tracing::warn!(round, %status, "could not withdraw"),
                }
            }
            return Err(Failure::Fatal(ParticipantError::Local(e.to_string())));
        }
    };
    if !keep_going {
        tracing::warn!(
            round,
            "the round stopped waiting for this site; update dropped"
        );
        return Ok(None);
    }
    Ok(Some(update))
}
