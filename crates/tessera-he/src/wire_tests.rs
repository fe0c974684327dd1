//! fhe.rs's encoding, as key shares travel: every framing but the one
//! fhe.rs writes is refused, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fhe::bfv::{Encoding, Plaintext, PublicKey, SecretKey};
use fhe_traits::{FheEncoder, FheEncrypter, Serialize};

use super::*;

fn generator(seed: u8) -> rand_chacha_09::ChaCha20Rng {
    <rand_chacha_09::ChaCha20Rng as rand_chacha_09::rand_core::SeedableRng>::from_seed([seed; 32])
}

/// A public-key encryption (both polynomials written out) and a
/// secret-key one (fhe.rs sends a seed for its second polynomial).
fn samples(params: &HeParams) -> (Ciphertext, Ciphertext) {
    let mut g = generator(3);
    let sk = SecretKey::random(params.bfv(), &mut g);
    let pk = PublicKey::new(&sk, &mut g);
    let pt = Plaintext::try_encode(&[1u64, 2], Encoding::poly(), params.bfv()).unwrap();
    (
        pk.try_encrypt(&pt, &mut g).unwrap(),
        sk.try_encrypt(&pt, &mut g).unwrap(),
    )
}

fn refused_why(r: Result<Ciphertext, HeError>) -> String {
    match r {
        Err(HeError::Refused(why)) => why,
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn other_framings_of_an_fhe_ciphertext_are_refused() {
    let params = HeParams::new().unwrap();
    let (ct, seeded) = samples(&params);
    let good = ct.to_bytes();
    let read = |b: &[u8]| fhe_ciphertext_from_bytes(&params, b, [true, true]);
    assert!(read(&good).unwrap() == ct);
    // The flags are pinned: a key share's (the second cleared) differ.
    let why = refused_why(fhe_ciphertext_from_bytes(&params, &good, [true, false]));
    assert!(why.contains("canonical encoding"), "{why}");
    let mut unreduced = good.clone();
    let at = unreduced.len() - 20;
    unreduced[at] = 0xff;
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff; 64],
        good[..good.len() / 2].to_vec(),
        vec![0u8; 200_000],
        unreduced,
    ];
    // Other framings of the same ciphertext: a field fhe.rs ignores, a
    // level field written at its default, the polynomials' length in a
    // longer varint; the same polynomial's other forms.
    let mut unknown = good.clone();
    unknown.extend_from_slice(&[0x28, 0x01]);
    let mut level_zero = good.clone();
    level_zero.extend_from_slice(&[0x18, 0x00]);
    cases.extend([unknown, level_zero, longer_varint(&good)]);
    let variants = polynomial_variants(&good);
    // The flag cleared (the same ciphertext as fhe.rs reads it, under
    // another digest) and the unreduced coefficient.
    for variant in &variants[variants.len() - 2..] {
        let why = refused_why(read(variant));
        assert!(why.contains("canonical encoding"), "{why}");
    }
    cases.extend(variants);
    for i in 0..200usize {
        let mut b = good.clone();
        let at = (i * 7919) % b.len();
        b[at] ^= 1 << (i % 8);
        cases.push(b);
    }
    let mut refusals = 0;
    for bad in &cases {
        match read(bad) {
            Err(HeError::Refused(_)) => refusals += 1,
            Err(e) => panic!("not a refusal: {e}"),
            Ok(ct) => assert_eq!(ct.to_bytes(), *bad, "read back as another ciphertext"),
        }
    }
    assert!(refusals >= 5, "{refusals} refused");
    let why = refused_why(read(&seeded.to_bytes()));
    assert!(why.contains("canonical encoding"), "{why}");
}

/// `bytes` (fhe.rs's ciphertext: field 1, twice, each a polynomial) with the
/// first polynomial's length written in one more varint byte than needed.
fn longer_varint(bytes: &[u8]) -> Vec<u8> {
    let (tag, rest) = bytes.split_first().unwrap();
    assert_eq!(*tag, 0x0a);
    let n = rest.iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let mut out = vec![0x0a];
    out.extend_from_slice(&rest[..n - 1]);
    out.push(rest[n - 1] | 0x80);
    out.push(0x00);
    out.extend_from_slice(&rest[n..]);
    out
}

/// `bytes` with its first polynomial changed in place, one way each: the
/// representation as power basis, the degree halved, the variable-time flag
/// written a second time (honest bytes end with it set), a field appended,
/// the flag cleared, the first coefficient 2^62 - 1 (above its modulus; the
/// ciphertext's framing mended to fit). The last two are refused.
fn polynomial_variants(bytes: &[u8]) -> Vec<Vec<u8>> {
    // The first polynomial's bytes (field 1 of the ciphertext).
    let mut rest = &bytes[1..];
    let len = prost::encoding::decode_varint(&mut rest).unwrap() as usize;
    let (poly, after) = rest.split_at(len);
    let rebuilt = |p: Vec<u8>| {
        let mut out = vec![0x0a];
        prost::encoding::encode_varint(p.len() as u64, &mut out);
        out.extend(p);
        out.extend_from_slice(after);
        out
    };
    // Rq: representation (field 1) = 2, degree (field 2) = 4096, ...
    assert_eq!(&poly[..2], &[0x08, 0x02]);
    let mut power_basis = poly.to_vec();
    power_basis[1] = 0x01;
    let mut degree = poly.to_vec();
    assert_eq!(&degree[2..5], &[0x10, 0x80, 0x20]);
    degree[4] = 0x10;
    let mut flag = poly.to_vec();
    flag.extend_from_slice(&[0x20, 0x01]);
    let mut extra = poly.to_vec();
    extra.extend_from_slice(&[0x28, 0x07]);
    assert_eq!(&poly[poly.len() - 2..], &[0x20, 0x01]);
    let cleared = poly[..poly.len() - 2].to_vec();
    // ..., coefficients (field 3) of 31,744 bytes: 62 bits each.
    let mut unreduced = poly.to_vec();
    assert_eq!(&unreduced[5..9], &[0x1a, 0x80, 0xf8, 0x01]);
    unreduced[9..17].fill(0xff);
    [power_basis, degree, flag, extra, cleared, unreduced]
        .into_iter()
        .map(rebuilt)
        .collect()
}

/// Coefficient `index` of `bytes` (counted across both polynomials, 4,096
/// a polynomial), read at 62 bits, bit by bit (independently of `unpack`).
fn coefficient(bytes: &[u8], index: usize) -> u64 {
    (0..BITS).fold(0, |c, bit| {
        let at = index * BITS + bit;
        c | u64::from(bytes[at / 8] >> (at % 8) & 1) << bit
    })
}

/// `good` with coefficient `index` set to `value`, written bit by bit.
fn with_coefficient(good: &[u8], index: usize, value: u64) -> Vec<u8> {
    let mut out = good.to_vec();
    for bit in 0..BITS {
        let at = index * BITS + bit;
        out[at / 8] = out[at / 8] & !(1 << (at % 8)) | (((value >> bit) & 1) as u8) << (at % 8);
    }
    out
}

#[test]
fn every_coefficient_at_or_past_its_modulus_is_refused() {
    let params = HeParams::new().unwrap();
    let (ct, _) = samples(&params);
    let good = ciphertext_to_bytes(&ct);
    // The bit order is the polynomials' own: coefficient by coefficient.
    let read = ciphertext_from_bytes(&params, &good).unwrap();
    for (poly, p) in read.iter().enumerate() {
        let held = p.coefficients();
        for i in [0, 1, 31, 32, 4095] {
            assert_eq!(coefficient(&good, poly * DEGREE + i), held[[0, i]]);
        }
    }
    let q = MODULI[0];
    // Each polynomial; every place a coefficient can sit in the words
    // (thirty-two coefficients fill 31 words), the last ones too.
    for poly in 0..2 {
        let base = poly * DEGREE;
        let places = (0..32).chain([4094, 4095]);
        for (n, i) in places.enumerate() {
            let index = base + i;
            for value in [q, MASK, q - 1, n as u64] {
                let bytes = with_coefficient(&good, index, value);
                assert_eq!(coefficient(&bytes, index), value);
                match ciphertext_from_bytes(&params, &bytes) {
                    Ok(read) => {
                        assert!(value < q, "coefficient {index} = {value} accepted");
                        assert_eq!(ciphertext_to_bytes(&read), bytes);
                    }
                    Err(e) => {
                        assert!(value >= q, "coefficient {index} = {value} refused: {e}");
                        assert!(e.to_string().contains("canonical encoding"), "{e}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_wire_encoding_is_pinned_by_a_known_answer() {
    // Two polynomials of fixed power-basis coefficients, taken to the NTT
    // representation as fhe-math computes it: another NTT (roots, order,
    // a different fhe-math) would change these bytes, and peers of
    // different builds would read one another's ciphertexts as other
    // polynomials without any check failing.
    let params = HeParams::new().unwrap();
    let bytes = ciphertext_to_bytes(&known_answer(&params).unwrap());
    assert_eq!(bytes.len(), CIPHERTEXT_BYTES);
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    // (Pinned here by its hex as well as in `KNOWN_ANSWER`, which
    // `HeParams::new` checks: a change to either shows.)
    assert_eq!(
        hex,
        "cc0f26dabd5e881a0264cd85cf1006e45de58f5fd4c1893ebdae12c30001eeac"
    );
}

/// A piece is judged by every item's length, not the first's: one byte
/// short or long anywhere names that item, for ciphertexts as for the
/// polynomials a key holder fetches and answers with.
#[test]
fn a_piece_with_any_item_of_another_length_is_named() {
    for (size, what) in [
        (CIPHERTEXT_BYTES, "ciphertext"),
        (POLYNOMIAL_BYTES, "decryption share"),
    ] {
        let right = vec![0u8; size];
        assert_eq!(misfit_length(&[], size, what), None);
        assert_eq!(
            misfit_length(&[right.clone(), right.clone()], size, what),
            None
        );
        for (at, len) in [(0, size - 1), (2, size + 1), (1, 0)] {
            let mut piece = vec![right.clone(); 3];
            piece[at] = vec![0; len];
            assert_eq!(
                misfit_length(&piece, size, what),
                Some(format!(
                    "{what} {at} of the piece takes {len} bytes, not {size}"
                ))
            );
        }
    }
    // A whole ciphertext where a polynomial is due is refused as well.
    assert!(misfit_length(&[vec![0; CIPHERTEXT_BYTES]], POLYNOMIAL_BYTES, "polynomial").is_some());
}
