//! ristretto255 on eight lanes: decoding, encoding and the one-way map of
//! RFC 9496, extended twisted-Edwards point arithmetic (a = -1) and a
//! constant-time variable-base scalar multiplication by one shared scalar.

use super::field::{
    D_MINUS_ONE_SQ, EDWARDS_D, EDWARDS_D2, Fe, INVSQRT_A_MINUS_D, ONE, ONE_MINUS_D_SQ,
    SQRT_AD_MINUS_ONE, SQRT_M1,
};
#[cfg(target_arch = "x86_64")]
use super::lanes::Ifma;
use super::lanes::Lanes;
use super::lanes::Portable;
use super::{load_words, store_words};

/// Extended coordinates `(X : Y : Z : T)`, `x = X/Z`, `y = Y/Z`, `T = XY/Z`.
#[derive(Clone, Copy)]
pub(crate) struct Point<L> {
    x: Fe<L>,
    y: Fe<L>,
    z: Fe<L>,
    t: Fe<L>,
}

/// A point prepared for addition: `(Y + X, Y - X, 2 Z, 2 d T)`.
#[derive(Clone, Copy)]
struct Cached<L> {
    ypx: Fe<L>,
    ymx: Fe<L>,
    z2: Fe<L>,
    t2d: Fe<L>,
}

/// Bytes of one encoding as four little-endian words per lane.
pub(crate) type Words = [[u64; 8]; 4];

/// The point operations for one kind of lanes (see `field_impl`).
macro_rules! point_impl {
    ($L:ty, $(#[$a:meta])*) => {
#[allow(dead_code)]
        impl Point<$L> {
    $(#[$a])*
    fn identity() -> Self {
        Point {
            x: Fe::<$L>::constant([0; 5]),
            y: Fe::<$L>::constant(ONE),
            z: Fe::<$L>::constant(ONE),
            t: Fe::<$L>::constant([0; 5]),
        }
    }

    $(#[$a])*
    fn cached(&self) -> Cached<$L> {
        Cached {
            ypx: self.y.add(&self.x),
            ymx: self.y.sub(&self.x),
            z2: self.z.add(&self.z),
            t2d: self.t.mul(&Fe::<$L>::constant(EDWARDS_D2)),
        }
    }

    /// `self + q` (add-2008-hwcd-3).
    $(#[$a])*
    fn add_cached(&self, q: &Cached<$L>) -> Self {
        let a = self.y.sub(&self.x).mul(&q.ymx);
        let b = self.y.add(&self.x).mul(&q.ypx);
        let c = self.t.mul(&q.t2d);
        let d = self.z.mul(&q.z2);
        let (e, f, g, h) = (b.sub(&a), d.sub(&c), d.add(&c), b.add(&a));
        Point {
            x: e.mul(&f),
            y: g.mul(&h),
            z: f.mul(&g),
            t: e.mul(&h),
        }
    }

    $(#[$a])*
    pub(crate) fn add(&self, q: &Self) -> Self {
        self.add_cached(&q.cached())
    }

    /// `2 self` (dbl-2008-hwcd, a = -1); `T` computed only when `with_t`.
    $(#[$a])*
    fn double(&self, with_t: bool) -> Self {
        let a = self.x.square();
        let b = self.y.square();
        let zz = self.z.square();
        let c = zz.add(&zz);
        let a_plus_b = a.add(&b);
        let e = self.x.add(&self.y).square().sub(&a_plus_b);
        let g = b.sub(&a);
        let f = g.sub(&c);
        let h = a_plus_b.neg();
        Point {
            x: e.mul(&f),
            y: g.mul(&h),
            z: f.mul(&g),
            t: if with_t { e.mul(&h) } else { self.t },
        }
    }

    $(#[$a])*
    pub(crate) fn double_full(&self) -> Self {
        self.double(true)
    }

    /// `k P` in each lane, for one scalar `k` (little-endian bytes, below
    /// 2^255) shared by all lanes. Signed radix 16 over a per-lane table
    /// of `P .. 8 P`; the same operations whatever the digits, and every
    /// table entry read at every step (masked selection).
    $(#[$a])*
    pub(crate) fn mul(&self, k: &[u8; 32]) -> Self {
        let digits = radix_16(k);
        let base = self.cached();
        let mut table = [base; 8];
        let mut multiple = *self;
        for entry in table.iter_mut().skip(1) {
            multiple = multiple.add_cached(&base);
            *entry = multiple.cached();
        }
        let mut acc = Self::identity().add_cached(&Self::select(&table, digits[63]));
        for i in (0..63).rev() {
            acc = acc.double(false).double(false).double(false).double(true);
            acc = acc.add_cached(&Self::select(&table, digits[i]));
        }
        acc
    }

    /// ristretto255 decoding (RFC 9496 4.3.1) of each lane, and a mask of
    /// the lanes that held a valid encoding (the others hold garbage).
    $(#[$a])*
    pub(crate) fn decode(words: &Words) -> (Self, [bool; 8]) {
        let s = Fe::<$L>::from_words(words);
        let back = s.as_words();
        let s_neg = s.is_negative().to_array();
        let one = Fe::<$L>::constant(ONE);
        let ss = s.square();
        let u1 = one.sub(&ss);
        let u2 = one.add(&ss);
        let u2_sqr = u2.square();
        let v = Fe::<$L>::constant(EDWARDS_D).mul(&u1.square()).neg().sub(&u2_sqr);
        let (ok, inv) = Fe::<$L>::sqrt_ratio_i(&one, &v.mul(&u2_sqr));
        let dx = inv.mul(&u2);
        let dy = inv.mul(&dx).mul(&v);
        let x = s.add(&s).mul(&dx);
        let x = x.cond_neg(x.is_negative());
        let y = u1.mul(&dy);
        let t = x.mul(&y);
        let (ok, t_neg, y_zero) = (
            ok.to_array(),
            t.is_negative().to_array(),
            y.is_zero().to_array(),
        );
        let mut valid = [false; 8];
        for (i, v) in valid.iter_mut().enumerate() {
            let canonical = (0..4).all(|w| back[w][i] == words[w][i]);
            *v = canonical && s_neg[i] == 0 && ok[i] != 0 && t_neg[i] == 0 && y_zero[i] == 0;
        }
        let p = Point { x, y, z: one, t };
        (p, valid)
    }

    /// ristretto255 encoding (RFC 9496 4.3.2) of each lane.
    $(#[$a])*
    pub(crate) fn encode(&self) -> Words {
        let (x, y, z, t) = (&self.x, &self.y, &self.z, &self.t);
        let u1 = z.add(y).mul(&z.sub(y));
        let u2 = x.mul(y);
        let (_, invsqrt) = Fe::<$L>::sqrt_ratio_i(&Fe::<$L>::constant(ONE), &u1.mul(&u2.square()));
        let i1 = invsqrt.mul(&u1);
        let i2 = invsqrt.mul(&u2);
        let z_inv = i1.mul(&i2.mul(t));
        let sqrt_m1 = Fe::<$L>::constant(SQRT_M1);
        let ix = x.mul(&sqrt_m1);
        let iy = y.mul(&sqrt_m1);
        let enchanted = i1.mul(&Fe::<$L>::constant(INVSQRT_A_MINUS_D));
        let rotate = t.mul(&z_inv).is_negative();
        let x2 = Fe::<$L>::select(rotate, &iy, x);
        let y2 = Fe::<$L>::select(rotate, &ix, y);
        let den_inv = Fe::<$L>::select(rotate, &enchanted, &i2);
        let y2 = y2.cond_neg(x2.mul(&z_inv).is_negative());
        let s = den_inv.mul(&z.sub(&y2));
        s.cond_neg(s.is_negative()).as_words()
    }

    /// The Elligator-ristretto map of RFC 9496 4.3.4 (curve25519-dalek's
    /// `elligator_ristretto_flavor`).
    $(#[$a])*
    fn elligator(r0: &Fe<$L>) -> Self {
        let one = Fe::<$L>::constant(ONE);
        let d = Fe::<$L>::constant(EDWARDS_D);
        let r = Fe::<$L>::constant(SQRT_M1).mul(&r0.square());
        let n_s = r.add(&one).mul(&Fe::<$L>::constant(ONE_MINUS_D_SQ));
        let c = one.neg();
        let den = c.sub(&d.mul(&r)).mul(&r.add(&d));
        let (is_sq, s) = Fe::<$L>::sqrt_ratio_i(&n_s, &den);
        let s_prime = s.mul(r0);
        let s_prime = s_prime.cond_neg(s_prime.is_negative().xor(<$L>::splat(u64::MAX)));
        let s = Fe::<$L>::select(is_sq, &s, &s_prime);
        let c = Fe::<$L>::select(is_sq, &c, &r);
        let n_t = c.mul(&r.sub(&one)).mul(&Fe::<$L>::constant(D_MINUS_ONE_SQ)).sub(&den);
        let s_sq = s.square();
        // The completed point, then extended coordinates.
        let cx = s.add(&s).mul(&den);
        let cz = n_t.mul(&Fe::<$L>::constant(SQRT_AD_MINUS_ONE));
        let cy = one.sub(&s_sq);
        let ct = one.add(&s_sq);
        Point {
            x: cx.mul(&ct),
            y: cy.mul(&cz),
            z: cz.mul(&ct),
            t: cx.mul(&cy),
        }
    }

    /// ristretto255's `from_uniform_bytes` of 64 bytes per lane (given as
    /// the words of each half; bit 255 of each half is ignored).
    $(#[$a])*
    pub(crate) fn from_uniform(lo: &Words, hi: &Words) -> Self {
        let p1 = Self::elligator(&Fe::<$L>::from_words(lo));
        let p2 = Self::elligator(&Fe::<$L>::from_words(hi));
        p1.add(&p2)
    }

    /// The table entry for a signed digit in [-8, 8]: `|digit| P`, negated for a
    /// negative digit, the identity for 0; every entry is read.
    $(#[$a])*
    fn select(table: &[Cached<$L>; 8], digit: i8) -> Cached<$L> {
        let neg = digit >> 7;
        let abs = ((digit ^ neg).wrapping_sub(neg)) as u8;
        let one = Fe::<$L>::constant(ONE);
        let mut r = Cached {
            ypx: one,
            ymx: one,
            z2: one.add(&one),
            t2d: Fe::<$L>::constant([0; 5]),
        };
        for (j, entry) in table.iter().enumerate() {
            let x = u64::from(abs ^ (j as u8 + 1));
            // All ones when x == 0: (x - 1) has bit 63 set only for x = 0.
            let m = <$L>::splat(core::hint::black_box(
                0u64.wrapping_sub((x.wrapping_sub(1)) >> 63),
            ));
            r = Cached {
                ypx: Fe::<$L>::select(m, &entry.ypx, &r.ypx),
                ymx: Fe::<$L>::select(m, &entry.ymx, &r.ymx),
                z2: Fe::<$L>::select(m, &entry.z2, &r.z2),
                t2d: Fe::<$L>::select(m, &entry.t2d, &r.t2d),
            };
        }
        let m = <$L>::splat(core::hint::black_box((neg as i64) as u64));
        Cached {
            ypx: Fe::<$L>::select(m, &r.ymx, &r.ypx),
            ymx: Fe::<$L>::select(m, &r.ypx, &r.ymx),
            z2: r.z2,
            t2d: r.t2d.cond_neg(m),
        }
    }
}
#[allow(dead_code)]
        impl Point<$L> {
    /// `compress(2 k P)` for every packed 32-byte point of `input`, into
    /// `out`; `Err(i)` names the first invalid encoding.
    $(#[$a])*
    pub(crate) fn mul2_compress(input: &[u8], k: &[u8; 32], out: &mut [u8]) -> Result<(), usize> {
        for (c, (inp, o)) in input.chunks(8 * 32).zip(out.chunks_mut(8 * 32)).enumerate() {
            let (p, valid) = Self::decode(&load_words(inp.chunks_exact(32)));
            let n = inp.len() / 32;
            if let Some(bad) = valid[..n].iter().position(|v| !v) {
                return Err(c * 8 + bad);
            }
            store_words(&p.mul(k).double_full().encode(), o);
        }
        Ok(())
    }

    /// `compress(2 k from_uniform_bytes(h))` for every `h`, into `out`.
    $(#[$a])*
    pub(crate) fn hash_mul2_compress(hashes: &[[u8; 64]], k: &[u8; 32], out: &mut [u8]) {
        for (hs, o) in hashes.chunks(8).zip(out.chunks_mut(8 * 32)) {
            let lo = load_words(hs.iter().map(|h| &h[..32]));
            let hi = load_words(hs.iter().map(|h| &h[32..]));
            let p = Self::from_uniform(&lo, &hi);
            store_words(&p.mul(k).double_full().encode(), o);
        }
    }
}
    };
}

point_impl!(Portable, #[inline]);
#[cfg(target_arch = "x86_64")]
point_impl!(Ifma, #[inline] #[target_feature(enable = "avx512f,avx512ifma")]);

/// Signed radix-16 digits of a scalar below 2^255: 64 digits in [-8, 8)
/// (the last in [-8, 8]) with `k = sum d_i 16^i`.
fn radix_16(k: &[u8; 32]) -> [i8; 64] {
    let mut d = [0i8; 64];
    for (i, b) in k.iter().enumerate() {
        d[2 * i] = (b & 15) as i8;
        d[2 * i + 1] = (b >> 4) as i8;
    }
    for i in 0..63 {
        let carry = (d[i] + 8) >> 4;
        d[i] -= carry << 4;
        d[i + 1] += carry;
    }
    d
}
