//! The eight-lane engine against curve25519-dalek, byte for byte, through
//! the portable lanes (and through the IFMA lanes where the processor has
//! them).
#![allow(clippy::unwrap_used)]

use super::lanes::{Lanes, Portable};
use super::point::Point;
use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        for c in b.chunks_mut(8) {
            let w = self.next().to_le_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
        b
    }
}

/// p = 2^255 - 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// `a + b` on little-endian 256-bit integers (wrapping).
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut r = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        r[i] = s as u8;
        carry = s >> 8;
    }
    r
}

fn valid_encoding(rng: &mut Rng) -> [u8; 32] {
    RistrettoPoint::from_uniform_bytes(&rng.bytes::<64>())
        .compress()
        .to_bytes()
}

/// Candidate encodings: random strings, valid encodings and their
/// variants (negated s, s + p, the high bit set), and edge cases.
fn candidates(rng: &mut Rng, n: usize) -> Vec<[u8; 32]> {
    let mut v = vec![[0u8; 32], P, add_le(&P, &[1; 32]), [0xff; 32]];
    let mut one = [0u8; 32];
    one[0] = 1;
    v.push(one);
    v.push(add_le(&P, &one));
    while v.len() < n {
        let good = valid_encoding(rng);
        v.push(good);
        v.push(rng.bytes());
        let mut high = good;
        high[31] |= 0x80;
        v.push(high);
        v.push(add_le(&good, &P));
        // p - s: the negated s.
        let mut neg = [0u8; 32];
        let mut borrow = 0i16;
        for i in 0..32 {
            let d = i16::from(P[i]) - i16::from(good[i]) - borrow;
            neg[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        v.push(neg);
        // A small s (many are valid, some not).
        let mut small = [0u8; 32];
        small[0] = (rng.next() & 0xfe) as u8;
        v.push(small);
    }
    v.truncate(n);
    v
}

fn dalek_decode(b: &[u8; 32]) -> Option<RistrettoPoint> {
    CompressedRistretto(*b).decompress()
}

fn words(items: &[[u8; 32]]) -> point::Words {
    load_words(items.iter().map(|b| &b[..]))
}

#[test]
fn decode_accepts_and_refuses_exactly_as_dalek_and_encode_round_trips() {
    let mut rng = Rng(1);
    let all = candidates(&mut rng, 8 * 150);
    let mut valid_seen = 0;
    for chunk in all.chunks(8) {
        let (p, valid) = Point::<Portable>::decode(&words(chunk));
        let enc = p.encode();
        let mut out = [0u8; 256];
        store_words(&enc, &mut out);
        for (i, b) in chunk.iter().enumerate() {
            let want = dalek_decode(b);
            assert_eq!(valid[i], want.is_some(), "lane {i} of {b:02x?}");
            if valid[i] {
                valid_seen += 1;
                assert_eq!(&out[i * 32..(i + 1) * 32], b, "re-encoding");
            }
        }
    }
    assert!(
        valid_seen > 150 && valid_seen < 8 * 150 - 150,
        "{valid_seen}"
    );
}

fn scalars(rng: &mut Rng) -> Vec<Scalar> {
    let l_minus_one = -Scalar::ONE;
    vec![
        Scalar::ZERO,
        Scalar::ONE,
        Scalar::from(2u64),
        l_minus_one,
        l_minus_one - Scalar::ONE,
        Scalar::from(8u64),
        Scalar::from_bytes_mod_order([0x88; 32]),
        Scalar::from_bytes_mod_order_wide(&rng.bytes::<64>()),
        Scalar::from_bytes_mod_order_wide(&rng.bytes::<64>()),
    ]
}

#[test]
fn mul2_compress_matches_dalek_for_edge_and_random_scalars() {
    let mut rng = Rng(2);
    for k in scalars(&mut rng) {
        // 13 points: one full batch of eight and a partial one.
        let mut input = Vec::new();
        for _ in 0..13 {
            input.extend_from_slice(&valid_encoding(&mut rng));
        }
        input[..32].copy_from_slice(&[0u8; 32]);
        let mut want = vec![0u8; input.len()];
        let mut got = vec![0u8; input.len()];
        mul2_compress_dalek(&input, &k, &mut want).unwrap();
        mul2_compress_portable(&input, &k, &mut got).unwrap();
        assert_eq!(got, want, "scalar {:02x?}", k.to_bytes());
        for (i, c) in input.chunks(32).enumerate() {
            let p = dalek_decode(c.try_into().unwrap()).unwrap();
            assert_eq!(
                &got[i * 32..(i + 1) * 32],
                (p * k + p * k).compress().as_bytes()
            );
        }
    }
}

#[test]
fn a_bad_point_is_refused_by_its_index_in_any_lane() {
    let mut rng = Rng(3);
    let k = Scalar::from_bytes_mod_order_wide(&rng.bytes::<64>());
    for (n, bad) in [(1, 0), (8, 7), (11, 9), (16, 8), (17, 16), (20, 3)] {
        let mut input = Vec::new();
        for _ in 0..n {
            input.extend_from_slice(&valid_encoding(&mut rng));
        }
        // s + p: the same field element, not canonical.
        let s: [u8; 32] = input[bad * 32..(bad + 1) * 32].try_into().unwrap();
        input[bad * 32..(bad + 1) * 32].copy_from_slice(&add_le(&s, &P));
        let mut out = vec![0u8; input.len()];
        assert_eq!(mul2_compress_dalek(&input, &k, &mut out), Err(bad));
        assert_eq!(mul2_compress_portable(&input, &k, &mut out), Err(bad));
    }
}

#[test]
fn hash_mul2_compress_matches_dalek() {
    let mut rng = Rng(4);
    for k in scalars(&mut rng).into_iter().skip(2) {
        let mut hashes: Vec<[u8; 64]> = (0..11).map(|_| rng.bytes()).collect();
        hashes[0] = [0u8; 64];
        hashes[1] = [0xff; 64];
        let mut want = vec![0u8; hashes.len() * 32];
        let mut got = vec![0u8; hashes.len() * 32];
        hash_mul2_compress_dalek(&hashes, &k, &mut want);
        hash_mul2_compress_portable(&hashes, &k, &mut got);
        assert_eq!(got, want);
    }
}

#[test]
fn field_multiplication_matches_a_schoolbook_reference() {
    // Reference: numbers below 2^256 as bytes; the product mod p by
    // double-and-add over the bits of b (add_le then reduce by subtracting
    // p while the value is at least p).
    fn ge(a: &[u8; 32], b: &[u8; 32]) -> bool {
        a.iter().rev().cmp(b.iter().rev()) != std::cmp::Ordering::Less
    }
    fn sub(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut r = [0u8; 32];
        let mut borrow = 0i16;
        for i in 0..32 {
            let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
            r[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        r
    }
    fn reduce(mut a: [u8; 32]) -> [u8; 32] {
        while ge(&a, &P) {
            a = sub(&a, &P);
        }
        a
    }
    fn mulmod(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let a = reduce(*a);
        let mut r = [0u8; 32];
        for i in (0..256).rev() {
            r = reduce(add_le(&r, &r));
            if b[i / 8] >> (i % 8) & 1 == 1 {
                r = reduce(add_le(&r, &a));
            }
        }
        r
    }
    let mut rng = Rng(5);
    let mut specials = vec![
        [0u8; 32],
        P,
        sub(
            &P,
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0,
            ],
        ),
    ];
    let mut max = [0xffu8; 32];
    max[31] = 0x7f;
    specials.push(max);
    for round in 0..64 {
        let a: Vec<[u8; 32]> = (0..8)
            .map(|i| {
                let mut x: [u8; 32] = rng.bytes();
                x[31] &= 0x7f;
                if round < 4 && i < specials.len() {
                    x = specials[(i + round) % specials.len()];
                }
                x
            })
            .collect();
        let b: Vec<[u8; 32]> = (0..8)
            .map(|_| {
                let mut x: [u8; 32] = rng.bytes();
                x[31] &= 0x7f;
                x
            })
            .collect();
        let fa = field::Fe::<Portable>::from_words(&words(&a));
        let fb = field::Fe::<Portable>::from_words(&words(&b));
        for (op, got) in [
            ("mul", fa.mul(&fb)),
            ("sub", fa.sub(&fb)),
            ("add", fa.add(&fb)),
            ("square", fa.square()),
        ] {
            let mut out = [0u8; 256];
            store_words(&got.as_words(), &mut out);
            for i in 0..8 {
                let want = match op {
                    "mul" => mulmod(&a[i], &b[i]),
                    "square" => mulmod(&a[i], &a[i]),
                    "add" => reduce(add_le(&reduce(a[i]), &reduce(b[i]))),
                    _ => reduce(add_le(
                        &sub(&add_le(&reduce(a[i]), &P), &reduce(b[i])),
                        &[0; 32],
                    )),
                };
                assert_eq!(out[i * 32..(i + 1) * 32], want, "{op} lane {i}");
            }
        }
        let _ = Portable::splat(0);
    }
}

/// The IFMA lanes against the portable ones, where this processor has them.
#[cfg(target_arch = "x86_64")]
#[test]
fn ifma_engine_matches_dalek_where_available() {
    if !ifma_available() {
        eprintln!("no AVX-512 IFMA here: the IFMA lanes are not exercised");
        return;
    }
    let mut rng = Rng(6);
    for k in scalars(&mut rng) {
        let cands = candidates(&mut rng, 8 * 40);
        // Decoding: each candidate alone, acceptance as dalek's.
        for c in &cands {
            let mut out = [0u8; 32];
            let got = mul2_compress_ifma(c, &k.to_bytes(), &mut out);
            match dalek_decode(c) {
                Some(p) => {
                    assert_eq!(got, Ok(()));
                    assert_eq!(out, (p * k + p * k).compress().to_bytes());
                }
                None => assert_eq!(got, Err(0)),
            }
        }
        let mut input = Vec::new();
        for _ in 0..37 {
            input.extend_from_slice(&valid_encoding(&mut rng));
        }
        let mut want = vec![0u8; input.len()];
        let mut got = vec![0u8; input.len()];
        mul2_compress_dalek(&input, &k, &mut want).unwrap();
        mul2_compress_ifma(&input, &k.to_bytes(), &mut got).unwrap();
        assert_eq!(got, want);
        let hashes: Vec<[u8; 64]> = (0..37).map(|_| rng.bytes()).collect();
        let mut want = vec![0u8; hashes.len() * 32];
        let mut got = vec![0u8; hashes.len() * 32];
        hash_mul2_compress_dalek(&hashes, &k, &mut want);
        hash_mul2_compress_ifma(&hashes, &k.to_bytes(), &mut got);
        assert_eq!(got, want);
    }
}

#[test]
fn the_self_check_passes_for_the_lanes_logic() {
    assert!(self_check(Engine::Lanes));
    assert!(self_check(Engine::Dalek));
}

/// Field elements at the edges of the invariant (limbs up to 2^52 - 1, the
/// top one up to 2^48 - 1: values up to 2^256 - 1, not reduced).
#[test]
fn field_operations_hold_at_the_largest_limbs() {
    fn limbs_to_bytes(l: &[u64; 5]) -> [u8; 32] {
        let mut v = [0u8; 32];
        let mut acc: u128 = 0;
        let mut bits = 0;
        let mut at = 0;
        for &x in l {
            acc |= u128::from(x) << bits;
            bits += 52;
            while bits >= 8 && at < 32 {
                v[at] = acc as u8;
                acc >>= 8;
                bits -= 8;
                at += 1;
            }
        }
        while at < 32 {
            v[at] = acc as u8;
            acc >>= 8;
            at += 1;
        }
        v
    }
    let mut rng = Rng(7);
    let m52 = (1u64 << 52) - 1;
    let m48 = (1u64 << 48) - 1;
    for round in 0..32 {
        let mut pick = |top: u64| -> [u64; 8] {
            core::array::from_fn(|_| match rng.next() % 3 {
                0 => top,
                1 => top - (rng.next() & 0xff),
                _ if round % 2 == 0 => rng.next() & top,
                _ => 0,
            })
        };
        let la: [[u64; 8]; 5] = [pick(m52), pick(m52), pick(m52), pick(m52), pick(m48)];
        let lb: [[u64; 8]; 5] = [pick(m52), pick(m52), pick(m52), pick(m52), pick(m48)];
        let fa = field::Fe(la.map(Portable));
        let fb = field::Fe(lb.map(Portable));
        let lane = |l: &[[u64; 8]; 5], i: usize| limbs_to_bytes(&core::array::from_fn(|k| l[k][i]));
        // Compare against products computed from canonical inputs.
        let ca = field::Fe::<Portable>::from_words(&fa.as_words());
        let cb = field::Fe::<Portable>::from_words(&fb.as_words());
        let mut out = [[0u8; 256]; 8];
        for (o, f) in out.iter_mut().zip([
            fa.mul(&fb),
            ca.mul(&cb),
            fa.square(),
            ca.square(),
            fa.sub(&fb),
            ca.sub(&cb),
            fa.add(&fb),
            ca.add(&cb),
        ]) {
            store_words(&f.as_words(), o);
        }
        for pair in out.chunks(2) {
            assert_eq!(pair[0], pair[1], "round {round}");
        }
        // The canonical form itself: the value mod p.
        let mut got = [0u8; 256];
        store_words(&fa.as_words(), &mut got);
        for i in 0..8 {
            let mut v = lane(&la, i);
            // Reduce: v < 2^256 < 3p, so subtract p at most twice.
            for _ in 0..2 {
                let ge = v.iter().rev().cmp(P.iter().rev()) != std::cmp::Ordering::Less;
                if ge {
                    let mut borrow = 0i16;
                    for k in 0..32 {
                        let d = i16::from(v[k]) - i16::from(P[k]) - borrow;
                        v[k] = d.rem_euclid(256) as u8;
                        borrow = i16::from(d < 0);
                    }
                }
            }
            assert_eq!(
                got[i * 32..(i + 1) * 32],
                v,
                "canonical, round {round} lane {i}"
            );
        }
    }
}
