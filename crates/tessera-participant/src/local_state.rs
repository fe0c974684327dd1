//! This site's strategy state across restarts of its process
//! (`ParticipantConfig::local_state`, `tessera participant --local-state`):
//! a personalized strategy's personal model (Ditto's model, FedPer's and
//! FedRep's head, APFL's model and mixing weight), written after every
//! training and read when the process starts again in the same run, so that
//! a restart mid-run loses none of it. It never leaves the site.
//!
//! The file: `TSRSTATE`, a little-endian `u32` header length, a JSON header
//! (format, site, run id, plan hash, round, instructions' name), then the
//! tensors as the run store keeps parameters. Written to a temporary file
//! and renamed, so a crash leaves the old state or the new one. A file of
//! another site, run or plan is left alone (a new run starts afresh).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_core::ParameterSet;
use tessera_engine::{Plan, Site};

const MAGIC: &[u8; 8] = b"TSRSTATE";
const FORMAT: &str = "tessera-site-state/1";

/// The largest state file read (a few copies of a model).
const MAX_FILE_BYTES: u64 = 4 << 30;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    site: String,
    run_id: String,
    plan_hash: String,
    /// The round whose training the state follows.
    round: u32,
    /// The instructions the state belongs to (`ditto`, `fedper`, ...).
    kind: String,
}

/// Where this site keeps its state in this run.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    site: String,
    run_id: String,
    plan_hash: String,
}

impl StateFile {
    /// The state file for `site` in run `run_id` of `plan`, where the
    /// plan's strategy keeps a personal model and a path is given; what an
    /// earlier process of this run saved there is given back to `site`, and
    /// the round it followed returned.
    pub(crate) fn open(
        path: Option<&Path>,
        site_name: &str,
        run_id: &str,
        plan: &Plan,
        site: &mut Site,
    ) -> (Option<StateFile>, Option<u32>) {
        let Some(path) = path.filter(|_| plan.federation.strategy.needs().personal) else {
            return (None, None);
        };
        let file = StateFile {
            path: path.to_path_buf(),
            site: site_name.to_string(),
            run_id: run_id.to_string(),
            plan_hash: tessera_engine::model_file::plan_hash(plan),
        };
        let checked = file.read().and_then(|read| match read {
            Some((header, state)) => tessera_aggregate::restored(&header.kind, &state)
                .map(|_| Some((header, state)))
                .map_err(|e| format!("its state does not restore: {e}")),
            None => Ok(None),
        });
        let restored = match checked {
            Ok(Some((header, state))) => {
                tracing::info!(
                    round = header.round,
                    file = %path.display(),
                    "this site's personal state restored from an earlier process of this run"
                );
                site.restore_local_state(header.kind, state);
                Some(header.round)
            }
            Ok(None) => None,
            Err(why) => {
                tracing::warn!(
                    file = %path.display(),
                    %why,
                    "this site's saved state is not used: its personal model starts afresh"
                );
                None
            }
        };
        (Some(file), restored)
    }

    /// The state saved for this site, run and plan; `None` when there is no
    /// file or it is another's.
    fn read(&self) -> Result<Option<(Header, ParameterSet)>, String> {
        let bytes = match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
            Ok(meta) if meta.len() > MAX_FILE_BYTES => {
                return Err(format!("{} bytes, more than {MAX_FILE_BYTES}", meta.len()));
            }
            Ok(_) => std::fs::read(&self.path).map_err(|e| e.to_string())?,
        };
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a Tessera state file")?;
        let (len, rest) = rest.split_at_checked(4).ok_or("truncated")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (header, tensors) = rest.split_at_checked(len).ok_or("truncated header")?;
        let header: Header =
            serde_json::from_slice(header).map_err(|e| format!("its header: {e}"))?;
        if header.format != FORMAT {
            return Err(format!("format '{}', not '{FORMAT}'", header.format));
        }
        if (
            header.site.as_str(),
            header.run_id.as_str(),
            header.plan_hash.as_str(),
        ) != (
            self.site.as_str(),
            self.run_id.as_str(),
            self.plan_hash.as_str(),
        ) {
            tracing::info!(
                file = %self.path.display(),
                "the saved state is another site's, run's or plan's: this run starts afresh"
            );
            return Ok(None);
        }
        let state = tessera_proto::decode_parameters(tensors).map_err(|e| e.to_string())?;
        state.check_finite().map_err(|e| e.to_string())?;
        Ok(Some((header, state)))
    }

    /// Removes the saved state; whether there is none left.
    pub(crate) fn remove(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Saves `site`'s state after its training of `round`, atomically.
    pub(crate) fn save(&self, round: u32, site: &Site) -> Result<(), String> {
        let Some((kind, state)) = site.local_state() else {
            return Ok(());
        };
        let header = serde_json::to_vec(&Header {
            format: FORMAT.into(),
            site: self.site.clone(),
            run_id: self.run_id.clone(),
            plan_hash: self.plan_hash.clone(),
            round,
            kind: kind.into(),
        })
        .map_err(|e| e.to_string())?;
        let len = u32::try_from(header.len()).map_err(|_| "header too long")?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            // The site's own model: readable by this user alone.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&len.to_le_bytes())?;
            f.write_all(&header)?;
            f.write_all(&tessera_proto::encode_parameters(&state))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
