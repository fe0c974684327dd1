//! Edits of one encoding: bits flipped, bytes set, inserted and deleted,
//! extreme varints and pieces written in, stretches spliced and repeated.

use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;

use crate::seeds::SEEDS;

/// Replacement varints and pieces: extreme lengths, numbers and tags.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

static PIECES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut p: Vec<Vec<u8>> = [
        0u64,
        1,
        0x7f,
        0x80,
        0xffff,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        i64::MAX as u64,
        u64::MAX,
        1 << 31,
        1 << 40,
    ]
    .into_iter()
    .map(varint)
    .collect();
    // An over-long varint, a truncated one, and tags of unknown and
    // deprecated wire types (groups), a huge field number.
    p.push(vec![0xff; 11]);
    p.push(vec![0x80]);
    p.push(vec![0x0b]);
    p.push(vec![0x0c]);
    p.push(vec![0x0f]);
    p.push(varint((u64::from(u32::MAX) << 3) | 2));
    p.push(varint(((1 << 29) - 1) << 3));
    // NaN, infinities and huge f64/f32 values.
    p.push(f64::NAN.to_le_bytes().to_vec());
    p.push(f64::INFINITY.to_le_bytes().to_vec());
    p.push(f64::MAX.to_le_bytes().to_vec());
    p.push((-1.0f64).to_le_bytes().to_vec());
    p.push(f32::NAN.to_le_bytes().to_vec());
    p.push(f32::INFINITY.to_le_bytes().to_vec());
    // Non-UTF-8 string bytes.
    p.push(vec![0xff, 0xfe, 0xc3]);
    p.push(vec![0xed, 0xa0, 0x80]);
    p
});

/// One edit of an encoding.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, usize),
    /// Replace the bytes at a position with a piece.
    Overwrite(Index, Index),
    /// Insert a piece.
    InsertPiece(Index, Index),
    /// Insert a stretch of another seed.
    Splice(Index, Index, Index, usize),
    /// Repeat a stretch of this one.
    Repeat(Index, usize, usize),
    /// Cut it short.
    Truncate(Index),
}

pub(crate) fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Edit::Overwrite(i, p)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Edit::InsertPiece(i, p)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(s, a, b, n)| Edit::Splice(s, a, b, n)),
        1 => (any::<Index>(), 1usize..32, 1usize..20).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

pub(crate) fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    match edit {
        Edit::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Edit::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Edit::Insert(i, b) => {
            let p = i.index(len + 1);
            bytes.splice(p..p, b.iter().copied());
        }
        Edit::Delete(i, n) if len > 0 => {
            let p = i.index(len);
            bytes.drain(p..(p + n).min(len));
        }
        Edit::Overwrite(i, p) => {
            let piece = &PIECES[p.index(PIECES.len())];
            let at = i.index(len + 1);
            let end = (at + piece.len()).min(len);
            bytes.splice(at..end, piece.iter().copied());
        }
        Edit::InsertPiece(i, p) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, PIECES[p.index(PIECES.len())].iter().copied());
        }
        Edit::Splice(s, a, b, n) => {
            let other = &SEEDS[s.index(SEEDS.len())];
            if !other.is_empty() {
                let from = a.index(other.len());
                let piece = &other[from..(from + n).min(other.len())];
                let at = b.index(len + 1);
                bytes.splice(at..at, piece.iter().copied());
            }
        }
        Edit::Repeat(i, n, k) if len > 0 => {
            let from = i.index(len);
            let piece = bytes[from..(from + n).min(len)].repeat(*k);
            bytes.splice(from..from, piece);
        }
        Edit::Truncate(i) => bytes.truncate(i.index(len + 1)),
        _ => {}
    }
}
