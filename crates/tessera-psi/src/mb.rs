//! A multi-buffer ristretto255 engine: eight points at a time, one per
//! 64-bit lane of an AVX-512 register, with the IFMA 52-bit multiply-add
//! instructions. Every hot path of the crate multiplies many points by one
//! secret scalar; this engine does that eight points at once and gives the
//! same bytes and the same refusals as curve25519-dalek, which remains the
//! engine unless `TESSERA_PSI_ENGINE=ifma` asks for the lanes on a
//! processor with AVX-512 IFMA (opt-in until measured on such hardware).

#[path = "mb_field.rs"]
mod field;
#[path = "mb_lanes.rs"]
mod lanes;
#[path = "mb_point.rs"]
mod point;
#[cfg(test)]
#[path = "mb_tests.rs"]
mod tests;

use std::sync::OnceLock;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;

use point::{Point, Words};

/// Which engine does the group arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// curve25519-dalek, one point at a time.
    Dalek,
    /// The eight-lane engine on plain integers (slow: for tests of the
    /// eight-lane logic on processors without IFMA).
    Lanes,
    /// Eight lanes of AVX-512 IFMA.
    Ifma,
}

/// The engine for this process: curve25519-dalek, unless
/// `TESSERA_PSI_ENGINE=ifma` asks for the IFMA lanes, which are then used
/// where the processor has them and they pass their self-check against
/// curve25519-dalek (else dalek). Opt-in until measured:
/// the IFMA lanes have been compiled and their logic tested on plain
/// integers, never run on IFMA hardware. `=lanes` runs the eight-lane
/// logic on plain integers (tests), `=portable` (or anything else) dalek.
pub(crate) fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    *ENGINE.get_or_init(|| match std::env::var("TESSERA_PSI_ENGINE").as_deref() {
        Ok("lanes") => Engine::Lanes,
        Ok("ifma") if ifma_available() && self_check(Engine::Ifma) => Engine::Ifma,
        // `engine_name` says which one runs (psi_bench prints it).
        _ => Engine::Dalek,
    })
}

/// Whether `engine` gives dalek's bytes and refusals on a fixed set of
/// valid points, invalid encodings, hash inputs and scalars.
fn self_check(engine: Engine) -> bool {
    use sha2::{Digest, Sha512};
    let wide = |i: u32| -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(b"tessera-psi/mb-self-check");
        h.update(i.to_le_bytes());
        h.finalize().into()
    };
    let mut input = vec![0u8; 32];
    let hashes: Vec<[u8; 64]> = (0..19).map(wide).collect();
    for h in &hashes {
        input.extend_from_slice(RistrettoPoint::from_uniform_bytes(h).compress().as_bytes());
    }
    let scalars = [
        Scalar::ONE,
        -Scalar::ONE,
        Scalar::from_bytes_mod_order_wide(&wide(100)),
    ];
    let run = |input: &[u8], k: &Scalar, out: &mut [u8]| mul2_compress_with(engine, input, k, out);
    for k in &scalars {
        let mut want = vec![0u8; input.len()];
        let mut got = vec![0u8; input.len()];
        if mul2_compress_dalek(&input, k, &mut want).is_err()
            || run(&input, k, &mut got).is_err()
            || got != want
        {
            return false;
        }
        let mut want = vec![0u8; hashes.len() * 32];
        let mut got = vec![0u8; hashes.len() * 32];
        hash_mul2_compress_dalek(&hashes, k, &mut want);
        hash_mul2_compress_with(engine, &hashes, k, &mut got);
        if got != want {
            return false;
        }
    }
    // Refusals: a non-canonical, a negative and an off-curve encoding.
    let mut high = [0xffu8; 32];
    high[31] = 0x7f;
    let mut negative = [0u8; 32];
    negative[0] = 1;
    let mut off = [0u8; 32];
    off[0] = 2;
    off[1] = 1;
    for (i, bad) in [high, negative, off].iter().enumerate() {
        let mut tampered = input.clone();
        let at = 3 + 5 * i;
        tampered[at * 32..(at + 1) * 32].copy_from_slice(bad);
        let mut out = vec![0u8; tampered.len()];
        let want = mul2_compress_dalek(&tampered, &scalars[2], &mut out);
        if want.is_ok() || run(&tampered, &scalars[2], &mut out) != want {
            return false;
        }
    }
    true
}

fn ifma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512ifma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `compress(2 k P)` for every packed 32-byte point `P` of `input`, into
/// `out` (same length); `Err(i)` names the first element that is not a
/// valid encoding.
pub(crate) fn mul2_compress(input: &[u8], k: &Scalar, out: &mut [u8]) -> Result<(), usize> {
    mul2_compress_with(engine(), input, k, out)
}

fn mul2_compress_with(
    engine: Engine,
    input: &[u8],
    k: &Scalar,
    out: &mut [u8],
) -> Result<(), usize> {
    match engine {
        Engine::Lanes => Point::<lanes::Portable>::mul2_compress(input, &k.to_bytes(), out),
        #[cfg(target_arch = "x86_64")]
        Engine::Ifma => mul2_compress_ifma(input, &k.to_bytes(), out),
        _ => mul2_compress_dalek(input, k, out),
    }
}

/// `compress(2 k from_uniform_bytes(h))` for every 64-byte `h`, into `out`.
pub(crate) fn hash_mul2_compress(hashes: &[[u8; 64]], k: &Scalar, out: &mut [u8]) {
    hash_mul2_compress_with(engine(), hashes, k, out)
}

fn hash_mul2_compress_with(engine: Engine, hashes: &[[u8; 64]], k: &Scalar, out: &mut [u8]) {
    match engine {
        Engine::Lanes => Point::<lanes::Portable>::hash_mul2_compress(hashes, &k.to_bytes(), out),
        #[cfg(target_arch = "x86_64")]
        Engine::Ifma => hash_mul2_compress_ifma(hashes, &k.to_bytes(), out),
        _ => hash_mul2_compress_dalek(hashes, k, out),
    }
}

fn double_compress_dalek(points: &[RistrettoPoint], out: &mut [u8]) {
    for (c, o) in RistrettoPoint::double_and_compress_batch(points)
        .iter()
        .zip(out.chunks_exact_mut(32))
    {
        o.copy_from_slice(c.as_bytes());
    }
}

pub(crate) fn mul2_compress_dalek(input: &[u8], k: &Scalar, out: &mut [u8]) -> Result<(), usize> {
    let pts = input
        .chunks_exact(32)
        .enumerate()
        .map(|(i, c)| {
            CompressedRistretto::from_slice(c)
                .ok()
                .and_then(|c| c.decompress())
                .map(|p| p * k)
                .ok_or(i)
        })
        .collect::<Result<Vec<_>, _>>()?;
    double_compress_dalek(&pts, out);
    Ok(())
}

pub(crate) fn hash_mul2_compress_dalek(hashes: &[[u8; 64]], k: &Scalar, out: &mut [u8]) {
    let pts: Vec<RistrettoPoint> = hashes
        .iter()
        .map(|h| RistrettoPoint::from_uniform_bytes(h) * k)
        .collect();
    double_compress_dalek(&pts, out);
}

/// The words of up to eight 32-byte strings (missing lanes all zeros: the
/// identity's encoding).
pub(crate) fn load_words<'a>(items: impl Iterator<Item = &'a [u8]>) -> Words {
    let mut w = [[0u64; 8]; 4];
    for (lane, item) in items.enumerate() {
        for (j, word) in item.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(word);
            w[j][lane] = u64::from_le_bytes(b);
        }
    }
    w
}

pub(crate) fn store_words(w: &Words, out: &mut [u8]) {
    for (lane, o) in out.chunks_exact_mut(32).enumerate() {
        for (j, word) in o.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&w[j][lane].to_le_bytes());
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn mul2_compress_ifma(input: &[u8], k: &[u8; 32], out: &mut [u8]) -> Result<(), usize> {
    // SAFETY: reached only where AVX-512F and AVX-512 IFMA were detected
    // (`engine()` or the tests check `ifma_available()` first).
    unsafe { Point::<lanes::Ifma>::mul2_compress(input, k, out) }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn hash_mul2_compress_ifma(hashes: &[[u8; 64]], k: &[u8; 32], out: &mut [u8]) {
    // SAFETY: as in `mul2_compress_ifma`.
    unsafe { Point::<lanes::Ifma>::hash_mul2_compress(hashes, k, out) }
}

/// The portable lanes (slow: tests check the engine's logic with them on
/// any processor).
#[cfg(test)]
pub(crate) fn mul2_compress_portable(
    input: &[u8],
    k: &Scalar,
    out: &mut [u8],
) -> Result<(), usize> {
    Point::<lanes::Portable>::mul2_compress(input, &k.to_bytes(), out)
}

#[cfg(test)]
pub(crate) fn hash_mul2_compress_portable(hashes: &[[u8; 64]], k: &Scalar, out: &mut [u8]) {
    Point::<lanes::Portable>::hash_mul2_compress(hashes, &k.to_bytes(), out)
}
