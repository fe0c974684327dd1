//! A site's part in a rollout of a registered model (`Welcome.rollout`,
//! capability "canary"): a site that opted in (`canary`) scores the
//! candidate and the production model files on its own test rows and sends
//! each model's sums (rows, rows right, loss); then every site keeps the
//! version the coordinator decided on and serves it from then on. Under a
//! plan whose site metrics are sums only (capability "canary-secure"), a
//! canary sends nothing in the clear: it masks its counts in the task's
//! secure round, and the coordinator unmasks only the canaries' sum.
//!
//! The versions a site received are kept in its models folder as
//! `NAME/vVERSION.model`, and the version it serves is named in
//! `NAME/serving` (written whole, then renamed into place, so a crash
//! leaves the old one or the new one). A rollback is the coordinator
//! sending the previous version to serve: the site keeps every version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_data::LocalSite;
use tessera_engine::model_file::{ModelFile, Scores};
use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, task};
use tonic::transport::Channel;

use crate::supervisor::Failure;
use crate::{ParticipantConfig, ParticipantError, client, prepare};

/// The largest model file a rollout sends, bytes.
pub const MAX_MODEL_FILE: u64 = 64 << 20;
/// The longest registered model name a site keeps a folder for.
const MAX_NAME: usize = 100;

/// How a site takes part in rollouts.
#[derive(Debug, Clone, Default)]
pub struct RolloutSettings {
    /// The site tries candidate models before the others
    /// (`tessera participant --canary`).
    pub canary: bool,
    /// Where the versions it receives are kept (`--models`); without it,
    /// a rollout is refused (the site could not serve what it receives).
    pub models: Option<PathBuf>,
}

/// A registered model's name as a folder name: letters, digits, `-`, `_`
/// and `.`, not starting with a dot.
fn folder_name(name: &str) -> Result<&str, String> {
    let fits = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fits {
        Ok(name)
    } else {
        Err(format!(
            "the rollout's model name '{}' is not a folder name (letters, digits, '-', '_', \
             '.', at most {MAX_NAME})",
            tessera_proto::shown(name, MAX_NAME)
        ))
    }
}

/// The version of `name` this site serves, from its models folder.
pub fn serving(models: &Path, name: &str) -> Option<u32> {
    let name = folder_name(name).ok()?;
    let text = std::fs::read_to_string(models.join(name).join("serving")).ok()?;
    text.trim().parse().ok()
}

/// Every model this site serves, from its models folder (for its `Hello`).
pub fn served(models: &Path) -> Vec<pb::ServedModel> {
    let Ok(entries) = std::fs::read_dir(models) else {
        return Vec::new();
    };
    let mut out: Vec<pb::ServedModel> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| serving(models, &name).map(|version| pb::ServedModel { name, version }))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.truncate(64);
    out
}

/// The model file of `name`'s `version` in the models folder.
pub fn version_file(models: &Path, name: &str, version: u32) -> PathBuf {
    models.join(name).join(format!("v{version}.model"))
}

/// Writes `bytes` to `path` whole: a temporary file beside it, synced,
/// then renamed into place.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

/// Keeps `bytes` as `name`'s `version` (a model file already kept must
/// be the same: a version never changes).
fn keep(models: &Path, name: &str, version: u32, bytes: &[u8]) -> Result<(), String> {
    let path = version_file(models, name, version);
    match std::fs::read(&path) {
        Ok(kept) if kept == bytes => return Ok(()),
        Ok(_) => {
            return Err(format!(
                "{}: this site keeps another file as '{name}' version {version}: a registered \
                 version never changes, so the coordinator's is refused",
                path.display()
            ));
        }
        Err(_) => {}
    }
    write_whole(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the model files that follow a rollout task's header: their sizes
/// as `sizes` declares them, each at most [`MAX_MODEL_FILE`], in order.
async fn receive_files(
    stream: &mut tonic::Streaming<pb::Task>,
    sizes: &[u64],
) -> Result<Vec<Vec<u8>>, Failure> {
    let malformed = |e: String| Failure::Retry(format!("malformed rollout task: {e}"));
    if let Some(big) = sizes.iter().find(|s| **s == 0 || **s > MAX_MODEL_FILE) {
        return Err(malformed(format!(
            "a model file of {big} bytes (1 to {MAX_MODEL_FILE} are taken)"
        )));
    }
    let total: u64 = sizes.iter().sum();
    let mut all = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.part {
            Some(task::Part::Compressed(piece)) => {
                if all.len() as u64 + piece.len() as u64 > total {
                    return Err(malformed(format!("more than the {total} bytes declared")));
                }
                all.extend_from_slice(&piece);
            }
            _ => return Err(malformed("a rollout task carries its files only".into())),
        }
    }
    if all.len() as u64 != total {
        return Err(malformed(format!(
            "{} bytes of the {total} declared",
            all.len()
        )));
    }
    let mut files = Vec::new();
    let mut rest = all.as_slice();
    for size in sizes {
        let (file, tail) = rest.split_at(*size as usize);
        files.push(file.to_vec());
        rest = tail;
    }
    Ok(files)
}

/// One model's sums on the site's test rows, as the coordinator takes them.
fn report(
    site: &str,
    version: u32,
    scores: &tessera_engine::model_file::Scores,
) -> pb::EvaluationReport {
    pb::EvaluationReport {
        site: site.to_string(),
        round: version,
        n_examples: scores.n,
        loss_sum: scores.loss_sum,
        n_correct: scores.correct,
        ..Default::default()
    }
}

/// A canary that cannot score says why and leaves the rollout (so the
/// coordinator decides without it rather than waiting), then stops.
async fn give_up(
    client: &mut FederationClient<Channel>,
    config: &ParticipantConfig,
    welcome: &pb::Welcome,
    why: String,
) -> Failure {
    tracing::error!(%why, "this canary site cannot score the rollout's models");
    if client::can_withdraw(welcome)
        && let Err(status) = client::withdraw(client, &config.site, 0, &why, true).await
    {
        tracing::warn!(%status, "could not tell the coordinator");
    }
    Failure::Fatal(ParticipantError::Local(why))
}

/// A model's sums on the site's test rows, and each row's outcome.
type RowScores = (Scores, Vec<Option<bool>>);

/// Of the rows both models scored: those the candidate alone got right,
/// and those production alone got right.
fn discordant(candidate: &[Option<bool>], production: &[Option<bool>]) -> (u64, u64) {
    let mut only = (0, 0);
    for pair in candidate.iter().zip(production) {
        match pair {
            (Some(true), Some(false)) => only.0 += 1,
            (Some(false), Some(true)) => only.1 += 1,
            _ => {}
        }
    }
    only
}

/// Runs `work` while heartbeats tell the coordinator the site is at work
/// (a canary receiving two large files, reading a large table or scoring
/// it is not taken for gone).
async fn beating<T>(
    client: &mut FederationClient<Channel>,
    config: &ParticipantConfig,
    beat: Option<Duration>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let every = beat.unwrap_or(Duration::from_secs(3600));
    loop {
        tokio::select! {
            done = &mut work => return done,
            () = tokio::time::sleep(every), if beat.is_some() => {
                let beat = pb::HeartbeatRequest { site: config.site.clone(), round: 0 };
                if let Err(status) = client.heartbeat(beat).await {
                    tracing::warn!(%status, "heartbeat failed");
                }
            }
        }
    }
}

/// Scores each model on the site's test rows, off the async runtime, under
/// heartbeats. Gives the rows back with the scores.
async fn score_all(
    client: &mut FederationClient<Channel>,
    config: &ParticipantConfig,
    beat: Option<Duration>,
    site: LocalSite,
    files: Vec<ModelFile>,
) -> Result<(LocalSite, Vec<Result<RowScores, String>>), Failure> {
    let work = tokio::task::spawn_blocking(move || {
        let (train, _) = site.train_rows();
        let (test, labels) = site.test_rows();
        let scores = files
            .iter()
            .map(|f| {
                f.score_rows(&train, &test, &labels)
                    .map_err(|e| e.to_string())
            })
            .collect();
        (site, scores)
    });
    beating(client, config, beat, work)
        .await
        .map_err(|e| Failure::Fatal(ParticipantError::Local(format!("scoring crashed: {e}"))))
}

/// Takes part in the rollout the welcome announces, until the coordinator
/// says which version every site serves.
pub(crate) async fn take_part(
    config: &ParticipantConfig,
    client: &mut FederationClient<Channel>,
    welcome: &pb::Welcome,
) -> Result<(), Failure> {
    let local = |e: String| Failure::Fatal(ParticipantError::Local(e));
    let Some(models) = config.rollout.models.as_deref() else {
        return Err(local(
            "the coordinator runs a rollout of a registered model, and this site keeps no \
             models: give --models DIR, where the versions it receives are kept and served"
                .into(),
        ));
    };
    let announced = welcome.rollout.clone().unwrap_or_default();
    let name = folder_name(&announced.name).map_err(local)?.to_string();
    let plan = prepare::coordinators_plan(config, welcome)?;
    let mut rows = None;
    let beat = client::heartbeat_interval(welcome);
    let summed = plan.privacy.site_metrics.sums_only();
    let mut key_ring = None;
    let identity = if summed {
        client::SecureIdentity::load(config.tls.as_ref()).map_err(Failure::Fatal)?
    } else {
        client::SecureIdentity::load(None).map_err(Failure::Fatal)?
    };
    tracing::info!(
        model = %name,
        serving = ?serving(models, &name),
        canary = config.rollout.canary,
        "taking part in a rollout"
    );
    loop {
        let mut stream = client
            .next_task(pb::TaskRequest {
                site: config.site.clone(),
                // The version it serves: the coordinator sends the one
                // decided until the site holds it.
                held_round: serving(models, &name),
            })
            .await?
            .into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Failure::Retry("task stream ended without a task".into()));
        };
        let header = match first.part {
            Some(task::Part::Finished(f)) => {
                let serve = f.serve.unwrap_or_default();
                let kept = serving(models, &name);
                if serve.name == name && kept != Some(serve.version) {
                    return Err(local(format!(
                        "the rollout ended with every site serving '{name}' version {}, and \
                         this site serves {}",
                        serve.version,
                        kept.map_or("none".to_string(), |v| format!("version {v}"))
                    )));
                }
                tracing::info!(model = %name, version = ?kept, reason = %f.reason, "rollout over");
                return Ok(());
            }
            Some(task::Part::Header(h)) => h,
            _ => return Err(Failure::Retry("a task starts with its header".into())),
        };
        let task = header.rollout.clone().unwrap_or_default();
        if task.name != name {
            return Err(Failure::Retry(format!(
                "a rollout task for model '{}' in a rollout of '{name}'",
                tessera_proto::shown(&task.name, MAX_NAME)
            )));
        }
        match header.kind() {
            pb::TaskKind::Canary if task.version != announced.version => {
                let why = format!(
                    "the coordinator announced version {} of '{name}' and asked this canary to \
                     compare version {}: refused",
                    announced.version, task.version
                );
                return Err(give_up(client, config, welcome, why).await);
            }
            pb::TaskKind::Canary => {
                if !config.rollout.canary {
                    return Err(local(
                        "the coordinator asked this site to try a candidate model, and it did \
                         not opt in (--canary)"
                            .into(),
                    ));
                }
                // Under sums only, the comparison goes through the secure
                // round of the candidate's version, and nothing in the clear.
                let secure_round = task.version | tessera_secagg::ROLLOUT_ROUND;
                let fits = match summed {
                    true => {
                        header.round == secure_round
                            && task.version < tessera_secagg::ANALYTICS_ROUND
                    }
                    false => header.round == 0,
                };
                if !fits {
                    let why = format!(
                        "the plan's site metrics are {}, and the coordinator asked for this \
                         canary's comparison in round {}: refused",
                        plan.privacy.site_metrics.name(),
                        header.round
                    );
                    return Err(give_up(client, config, welcome, why).await);
                }
                let marker = models
                    .join(&name)
                    .join(format!("compared-v{}", task.version));
                if summed && marker.exists() {
                    // A second secure sum of the same counts over another
                    // cohort would give them away by difference.
                    let why = format!(
                        "this canary already masked its comparison of '{name}' version {} ({}): \
                         it takes part in one secure comparison of a version, to keep a second \
                         sum over another cohort from giving its counts away (remove that file \
                         to allow another)",
                        task.version,
                        marker.display()
                    );
                    tracing::warn!(%why, "refusing a second secure comparison");
                    let reason = tessera_proto::shown(&why, tessera_proto::MAX_WITHDRAW_REASON);
                    if let Err(status) =
                        client::withdraw(client, &config.site, header.round, &reason, false).await
                    {
                        tracing::warn!(%status, "could not tell the coordinator");
                    }
                    continue;
                }
                let sizes = [task.bytes, task.production_bytes];
                let files =
                    beating(client, config, beat, receive_files(&mut stream, &sizes)).await?;
                let versions = [task.version, task.production_version];
                // Each file is read as a model before any is kept.
                let mut parsed = Vec::new();
                for (version, bytes) in versions.iter().zip(&files) {
                    match ModelFile::from_bytes(bytes) {
                        Ok(file) => parsed.push(file),
                        Err(e) => {
                            let why = format!("'{name}' version {version}'s model file: {e}");
                            return Err(give_up(client, config, welcome, why).await);
                        }
                    }
                }
                for (version, bytes) in versions.iter().zip(&files) {
                    keep(models, &name, *version, bytes).map_err(local)?;
                }
                let site = match rows.take() {
                    Some(site) => site,
                    None => {
                        let read = client::read_site(
                            &plan.data,
                            &config.site,
                            config.data.as_deref(),
                            &config.plan_dir,
                            config.mapping.as_ref(),
                        );
                        beating(client, config, beat, read)
                            .await
                            .map_err(Failure::Fatal)?
                    }
                };
                let (site, scored) = score_all(client, config, beat, site, parsed).await?;
                rows = Some(site);
                let mut reports = Vec::new();
                let mut outcomes = Vec::new();
                for (version, scores) in versions.into_iter().zip(scored) {
                    let (scores, rows) = match scores {
                        Ok(scores) => scores,
                        Err(e) => {
                            let why = format!("scoring '{name}' version {version}: {e}");
                            return Err(give_up(client, config, welcome, why).await);
                        }
                    };
                    tracing::info!(
                        version,
                        rows = scores.n,
                        correct = scores.correct,
                        "scored on this site's test rows"
                    );
                    reports.push(report(&config.site, version, &scores));
                    outcomes.push(rows);
                }
                // The paired comparison: the rows one model alone got
                // right, with the candidate's sums.
                let (candidate_only, production_only) = discordant(&outcomes[0], &outcomes[1]);
                if summed {
                    write_whole(&marker, format!("{}\n", welcome.run_id).as_bytes())
                        .map_err(|e| local(format!("{}: {e}", marker.display())))?;
                    let counts = tessera_analytics::ab::CanaryCounts::of_site(
                        reports[1].n_examples,
                        reports[1].n_correct,
                        candidate_only,
                        production_only,
                    );
                    let counted = client::secure_compare(
                        client,
                        &config.site,
                        &plan,
                        &identity,
                        &mut key_ring,
                        secure_round,
                        counts.encode(),
                    )
                    .await?;
                    if counted {
                        tracing::info!(
                            round = secure_round,
                            "the comparison is in the canaries' secure sum"
                        );
                    } else {
                        tracing::warn!(
                            round = secure_round,
                            "the secure round ended before this site's comparison counted"
                        );
                    }
                    continue;
                }
                reports[0].candidate_only_right = Some(candidate_only);
                reports[0].production_only_right = Some(production_only);
                for report in reports {
                    client.submit_evaluation(report).await?;
                }
            }
            pb::TaskKind::Serve => {
                let sizes = [task.bytes];
                let files =
                    beating(client, config, beat, receive_files(&mut stream, &sizes)).await?;
                ModelFile::from_bytes(&files[0]).map_err(|e| {
                    local(format!(
                        "'{name}' version {}'s model file: {e}",
                        task.version
                    ))
                })?;
                keep(models, &name, task.version, &files[0]).map_err(local)?;
                write_whole(
                    &models.join(&name).join("serving"),
                    format!("{}\n", task.version).as_bytes(),
                )
                .map_err(|e| local(format!("{}: {e}", models.display())))?;
                tracing::info!(model = %name, version = task.version, decision = %task.decision, "serving");
            }
            _ => {
                return Err(Failure::Retry("a task of another kind in a rollout".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_one_model_alone_got_right_are_counted_where_both_scored() {
        let (t, f) = (Some(true), Some(false));
        let candidate = [t, t, f, f, t, None, t];
        let production = [t, f, t, f, f, t, None];
        assert_eq!(discordant(&candidate, &production), (2, 1));
    }

    #[test]
    fn a_site_keeps_each_version_once_and_names_what_it_serves() {
        let dir = std::env::temp_dir().join(format!("tessera-rollout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(served(&dir).is_empty());
        keep(&dir, "readmission", 1, b"one").unwrap();
        keep(&dir, "readmission", 1, b"one").unwrap();
        let changed = keep(&dir, "readmission", 1, b"other").unwrap_err();
        assert!(changed.contains("never changes"), "{changed}");
        write_whole(&dir.join("readmission").join("serving"), b"1\n").unwrap();
        assert_eq!(serving(&dir, "readmission"), Some(1));
        assert_eq!(
            served(&dir),
            vec![pb::ServedModel {
                name: "readmission".into(),
                version: 1
            }]
        );
        assert!(folder_name("../etc").is_err());
        assert!(folder_name(".hidden").is_err());
        assert!(folder_name("a/b").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
