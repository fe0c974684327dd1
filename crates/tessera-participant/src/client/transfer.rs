//! A task's parameters in, an update's stream out.

use std::sync::Arc;

use tessera_proto::pb::federation_client::FederationClient;
use tessera_proto::pb::{self, task, update_part};
use tessera_proto::{Assembler, CHUNK_BYTES, Limits, chunks, layout_of};
use tonic::transport::Channel;

use super::Failure;

/// Reads a task's parameters (set 0, or with compressed models the change
/// from the `held` model, or nothing when it is held) and the instructions' tensors (set 1).
pub async fn receive_parameters(
    header: &pb::TaskHeader,
    stream: &mut tonic::Streaming<pb::Task>,
    held: Option<(u32, Arc<tessera_core::ParameterSet>)>,
) -> Result<
    (
        tessera_core::ParameterSet,
        Option<tessera_core::ParameterSet>,
    ),
    Failure,
> {
    let malformed = |e: String| Failure::Retry(format!("malformed task: {e}"));
    let mut global =
        Assembler::new(&header.layout, Limits::default()).map_err(|e| malformed(e.to_string()))?;
    // The instructions' tensors (SCAFFOLD's server control variate), set 1.
    let mut tensors = if header.has_server_control {
        Some(
            Assembler::new(&header.layout, Limits::default())
                .map_err(|e| malformed(e.to_string()))?,
        )
    } else {
        None
    };
    let delivery = header.model_delivery();
    let base = match delivery {
        pb::ModelDelivery::Full => None,
        pb::ModelDelivery::Change | pb::ModelDelivery::Held => {
            let want = match delivery {
                pb::ModelDelivery::Change => header.model_round.checked_sub(1),
                _ => Some(header.model_round),
            };
            match held {
                Some((round, model)) if Some(round) == want => Some(model),
                // Asked again, it sends the whole model.
                _ => {
                    return Err(malformed(
                        "a model change for a model this site does not hold".into(),
                    ));
                }
            }
        }
    };
    let codec: tessera_compress::Codec = if header.model_codec.is_empty() {
        tessera_compress::Codec::NONE
    } else {
        header
            .model_codec
            .parse()
            .map_err(|e: tessera_compress::CompressError| malformed(e.to_string()))?
    };
    let mut change: Vec<u8> = Vec::new();
    while let Some(message) = stream.message().await? {
        let chunk = match message.part {
            Some(task::Part::Chunk(chunk)) => chunk,
            Some(task::Part::Compressed(piece)) if delivery == pb::ModelDelivery::Change => {
                let bound = base
                    .as_ref()
                    .map_or(0, |b| codec.max_encoded_len(b.n_values()));
                if change.len() + piece.len() > bound {
                    return Err(malformed(format!(
                        "the model change passes {bound} bytes, the most '{codec}' takes"
                    )));
                }
                change.extend_from_slice(&piece);
                continue;
            }
            _ => return Err(malformed("a second header".into())),
        };
        match (chunk.set, tensors.as_mut()) {
            (0, _) if base.is_some() => Err(tessera_proto::ProtoError::Malformed(
                "model chunks in a task whose model is held or comes as a change".into(),
            )),
            (0, _) => global.push(&chunk),
            (1, Some(c)) => c.push(&chunk),
            (set, _) => return Err(malformed(format!("chunk for set {set}"))),
        }
        .map_err(|e| malformed(e.to_string()))?;
    }
    let global = match (delivery, base) {
        (pb::ModelDelivery::Change, Some(base)) => {
            let decoded = tessera_compress::decode_set(&change, &base)
                .map_err(|e| malformed(e.to_string()))?;
            let mut next = base.as_ref().clone();
            next.add_scaled(&decoded, 1.0)
                .map_err(|e| malformed(e.to_string()))?;
            next
        }
        (_, Some(base)) => base.as_ref().clone(),
        (_, None) => global.finish().map_err(|e| malformed(e.to_string()))?,
    };
    let tensors = tensors
        .map(Assembler::finish)
        .transpose()
        .map_err(|e| malformed(e.to_string()))?;
    Ok((global, tensors))
}

/// The span of a task `site` received (`header`), in the trace whose
/// context came with it (`metadata`): the round's, the coordinator's.
pub fn task_span(
    site: &str,
    header: &pb::TaskHeader,
    metadata: &tonic::metadata::MetadataMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "task",
        site,
        round = header.round,
        kind = header.kind().as_str_name()
    );
    tessera_proto::trace::follow(&span, metadata);
    span
}

/// What an update's header and set 2 carry beside the update.
#[derive(Debug, Default)]
pub struct Extras {
    /// The seconds its local training took, where known (1.25).
    pub train_seconds: Option<f64>,
    /// Under `[contribution]`: the test rows and test-loss gradient at the
    /// round's start (1.26).
    pub test_gradient: Option<(u64, tessera_core::ParameterSet)>,
    /// Under `[contribution]` without DP: the site's released data quality
    /// score (1.26).
    pub quality: Option<f64>,
}

/// Streams `update` for `round` as `site`: its delta in chunks, or its
/// `encoded` form in pieces, then its auxiliary sum (set 1), with the
/// [`Extras`]: the seconds its local training took where known
/// (`train_seconds`), and under `[contribution]` its test rows and
/// test-loss gradient (set 2).
pub async fn send_update(
    site: &str,
    client: &mut FederationClient<Channel>,
    round: u32,
    update: &tessera_core::Update,
    codec: tessera_compress::Codec,
    encoded: Option<Vec<u8>>,
    extras: Extras,
) -> Result<pb::UpdateReply, Failure> {
    let Extras {
        train_seconds,
        test_gradient,
        quality,
    } = extras;
    let header = pb::UpdatePart {
        part: Some(update_part::Part::Header(pb::UpdateHeader {
            site: site.to_string(),
            round,
            n_examples: update.n_examples,
            has_control: update.aux.is_some(),
            n_steps: update.stats.n_steps,
            mean_train_loss: update.stats.mean_train_loss,
            start_loss: update.stats.start_loss,
            train_seconds,
            test_rows: test_gradient.as_ref().map(|(rows, _)| *rows),
            quality,
            layout: layout_of(&update.delta),
            codec: if encoded.is_some() {
                codec.to_string()
            } else {
                String::new()
            },
        })),
    };
    let delta = update.delta.clone();
    let aux = update.aux.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return;
        }
        // The delta: its compressed encoding in pieces, or chunks of values.
        let delta_parts: Box<dyn Iterator<Item = update_part::Part> + Send> = match encoded {
            Some(bytes) => Box::new(
                bytes
                    .chunks(CHUNK_BYTES)
                    .map(|piece| update_part::Part::Compressed(piece.to_vec()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
            None => Box::new(chunks(0, &delta, CHUNK_BYTES).map(update_part::Part::Chunk)),
        };
        let parts = delta_parts
            .chain(
                aux.iter()
                    .flat_map(|c| chunks(1, c, CHUNK_BYTES))
                    .map(update_part::Part::Chunk),
            )
            .chain(
                test_gradient
                    .iter()
                    .flat_map(|(_, g)| chunks(2, g, CHUNK_BYTES))
                    .map(update_part::Part::Chunk),
            );
        for part in parts {
            if tx.send(pb::UpdatePart { part: Some(part) }).await.is_err() {
                return;
            }
        }
    });
    // The upload's span (the caller's) goes with it, for the coordinator to link.
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    tessera_proto::trace::inject(&tracing::Span::current(), request.metadata_mut());
    Ok(client.submit_update(request).await?.into_inner())
}
