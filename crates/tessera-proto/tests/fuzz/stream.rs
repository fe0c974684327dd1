//! An update as it travels, a stream of messages: built, received as the
//! coordinator receives it, and edited (messages dropped, repeated, swapped).

use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use tessera_core::{ParameterSet, SeededRng};
use tessera_proto::pb::{self, update_part::Part};
use tessera_proto::{Assembler, Limits, chunks, convert};

use crate::mutate::{Edit, apply, edit};
use crate::seeds::{SEEDS, update_header};

/// A model's update as it travels: a header, then chunks (or compressed
/// pieces), each its own message.
pub(crate) fn update_stream(
    set: &ParameterSet,
    chunk_bytes: usize,
    codec: Option<usize>,
) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let codec_name = codec.map_or("", |k| ["q8", "topk:0.5+q4", "randk:0.25"][k % 3]);
    parts.push(
        pb::UpdatePart {
            part: Some(Part::Header(update_header(set, codec_name))),
        }
        .encode_to_vec(),
    );
    if codec.is_some() {
        let codec: tessera_compress::Codec = codec_name.parse().unwrap();
        let bytes = tessera_compress::encode_set(&codec, set, None, &mut SeededRng::new(2)).0;
        for piece in bytes.chunks(chunk_bytes.max(1)) {
            parts.push(
                pb::UpdatePart {
                    part: Some(Part::Compressed(piece.to_vec())),
                }
                .encode_to_vec(),
            );
        }
    } else {
        for chunk in chunks(0, set, chunk_bytes) {
            parts.push(
                pb::UpdatePart {
                    part: Some(Part::Chunk(chunk)),
                }
                .encode_to_vec(),
            );
        }
    }
    parts
}

/// Receives an update stream as the coordinator does: the header's layout
/// must be the model's, chunks go into an [`Assembler`] in order, compressed
/// pieces are joined (up to the codec's bound) and decoded.
pub(crate) fn receive(model: &ParameterSet, parts: &[Vec<u8>]) -> Result<ParameterSet, String> {
    let mut parts = parts.iter();
    let first = parts.next().ok_or("empty update stream")?;
    let first = pb::UpdatePart::decode(first.as_slice()).map_err(|e| e.to_string())?;
    let Some(Part::Header(header)) = first.part else {
        return Err("an update starts with its header".into());
    };
    convert::fit_stats_from_pb(&header).map_err(|e| e.to_string())?;
    let mut delta = Assembler::new(&header.layout, Limits::default()).map_err(|e| e.to_string())?;
    delta.expect_layout_of(model).map_err(|e| e.to_string())?;
    let codec = if header.codec.is_empty() {
        tessera_compress::Codec::NONE
    } else {
        header
            .codec
            .parse::<tessera_compress::Codec>()
            .map_err(|e| e.to_string())?
    };
    let bound = codec.max_encoded_len(model.n_values());
    let mut compressed: Option<Vec<u8>> = (!codec.is_identity()).then(Vec::new);
    for part in parts {
        let part = pb::UpdatePart::decode(part.as_slice()).map_err(|e| e.to_string())?;
        match part.part {
            Some(Part::Chunk(chunk)) => {
                if compressed.is_some() || chunk.set != 0 {
                    return Err("unexpected chunk".into());
                }
                delta.push(&chunk).map_err(|e| e.to_string())?;
            }
            Some(Part::Compressed(piece)) => {
                let Some(bytes) = compressed.as_mut() else {
                    return Err("compressed parts in an uncompressed update".into());
                };
                if bytes.len() + piece.len() > bound {
                    return Err("too long".into());
                }
                bytes.extend_from_slice(&piece);
            }
            _ => return Err("a second header in one update".into()),
        }
    }
    match compressed {
        Some(bytes) => tessera_compress::decode_set(&bytes, model).map_err(|e| e.to_string()),
        None => delta.finish().map_err(|e| e.to_string()),
    }
}

/// Edits of a stream of messages.
#[derive(Debug, Clone)]
pub(crate) enum StreamEdit {
    /// Edit one message's bytes.
    Bytes(Index, Edit),
    /// Drop a message.
    Drop(Index),
    /// Repeat a message.
    Repeat(Index),
    /// Swap two messages.
    Swap(Index, Index),
    /// Insert a seed (of any kind).
    Seed(Index, Index),
}

pub(crate) fn stream_edit() -> impl Strategy<Value = StreamEdit> {
    prop_oneof![
        6 => (any::<Index>(), edit()).prop_map(|(i, e)| StreamEdit::Bytes(i, e)),
        1 => any::<Index>().prop_map(StreamEdit::Drop),
        1 => any::<Index>().prop_map(StreamEdit::Repeat),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| StreamEdit::Swap(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| StreamEdit::Seed(a, b)),
    ]
}

pub(crate) fn apply_to_stream(parts: &mut Vec<Vec<u8>>, edit: &StreamEdit) {
    let n = parts.len();
    match edit {
        StreamEdit::Bytes(i, e) if n > 0 => apply(&mut parts[i.index(n)], e),
        StreamEdit::Drop(i) if n > 0 => {
            parts.remove(i.index(n));
        }
        StreamEdit::Repeat(i) if n > 0 => {
            let k = i.index(n);
            let part = parts[k].clone();
            parts.insert(k, part);
        }
        StreamEdit::Swap(a, b) if n > 0 => parts.swap(a.index(n), b.index(n)),
        StreamEdit::Seed(s, at) => {
            let seed = SEEDS[s.index(SEEDS.len())].clone();
            parts.insert(at.index(n + 1), seed);
        }
        _ => {}
    }
}
