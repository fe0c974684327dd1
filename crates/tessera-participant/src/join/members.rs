//! The PSI reveals of a join (`reveal = "members"`, `"members_first"`,
//! `"count"`): ECDH-PSI (`tessera_psi::psi`) in mode both, receiver-only
//! or cardinality, the first site of the plan's `sites` the receiver. The
//! receiver releases nothing when fewer than `min_elements` identifiers are
//! shared: it refuses to the other site instead of sending its reveal.
//! Each site keeps which of its own identifiers are shared (as its data
//! file spells them) where its mode tells it.

use tessera_analytics::{JoinReveal, JoinSpec};
use tessera_psi::{Mode, PsiConfig, Query, Receiver, Response, Reveal, Sender};

use super::relay::{Relay, Stop};
use super::rows::JoinRows;
use super::{JoinFile, failed};

/// The PSI mode of a reveal (`None`: intersection-sum, not PSI).
fn mode(reveal: JoinReveal) -> Option<Mode> {
    match reveal {
        JoinReveal::CountMean => None,
        JoinReveal::Members => Some(Mode::Both),
        JoinReveal::MembersFirst => Some(Mode::ReceiverOnly),
        JoinReveal::Count => Some(Mode::Cardinality),
    }
}

/// Runs the join's PSI over the relay with the agreed matching `key`.
pub(super) async fn membership(
    first: bool,
    spec: &JoinSpec,
    relay: &mut Relay<'_>,
    file: &mut JoinFile,
    key: tessera_psi::MatchingKey,
    rows: JoinRows,
) -> Result<(), Stop> {
    let mode = mode(spec.reveal).ok_or_else(|| failed("not a PSI reveal"))?;
    let config = PsiConfig {
        max_elements: spec.max_elements,
        ..PsiConfig::new(mode)
    };
    let ids: Vec<String> = rows.rows.into_iter().map(|(id, _)| id).collect();
    let (prepared, ids) = tokio::task::spawn_blocking(move || {
        tessera_psi::prepare(&key, &ids).map(|prepared| (prepared, ids))
    })
    .await
    .map_err(failed)?
    .map_err(failed)?;
    // This site's own identifiers at `positions` of its tokens, sorted.
    let own = |positions: &[usize]| {
        let mut shared: Vec<String> = positions
            .iter()
            .filter_map(|&p| prepared.first_row.get(p))
            .filter_map(|&row| ids.get(row).cloned())
            .collect();
        shared.sort();
        shared
    };
    if first {
        let (receiver, query) = Receiver::start(config, &prepared.tokens).map_err(failed)?;
        relay.send("query", &query.to_bytes()).await?;
        let response = Response::from_bytes(&relay.receive("response").await?).map_err(failed)?;
        let (output, reveal) = receiver.finish(&response).map_err(failed)?;
        if output.size < spec.min_elements {
            return Err(failed(format!(
                "fewer than min_elements = {} identifiers are shared: no result is released",
                spec.min_elements
            )));
        }
        if let Some(reveal) = reveal {
            relay.send("reveal", &reveal.to_bytes()).await?;
        }
        file.count = Some(output.size as u64);
        file.peer_elements = Some(output.sender_size);
        file.shared = output.intersection.as_deref().map(own);
    } else {
        let query = Query::from_bytes(&relay.receive("query").await?).map_err(failed)?;
        let (sender, response) =
            Sender::respond(config, &prepared.tokens, &query).map_err(failed)?;
        relay.send("response", &response.to_bytes()).await?;
        let reveal = match mode {
            Mode::ReceiverOnly => None,
            _ => Some(Reveal::from_bytes(&relay.receive("reveal").await?).map_err(failed)?),
        };
        let output = sender.finish(reveal.as_ref()).map_err(failed)?;
        if let Some(size) = output.size
            && size < spec.min_elements
        {
            return Err(failed(format!(
                "the other site reports {size} shared identifiers, fewer than min_elements = {}",
                spec.min_elements
            )));
        }
        file.count = output.size.map(|s| s as u64);
        file.peer_elements = Some(output.receiver_size);
        file.shared = output.intersection.as_deref().map(own);
    }
    Ok(())
}
