//! GF(2^255 - 19) in eight lanes: five limbs of 52 bits (radix 2^52).
//!
//! Invariant of every [`Fe`]: limbs 0..4 below 2^52, limb 4 below 2^48
//! (the value below 2^256, not necessarily reduced). Multiplication needs
//! limbs below 2^52 (the IFMA instructions read 52 bits of each factor);
//! every operation returns the invariant form.

#[cfg(target_arch = "x86_64")]
use super::lanes::Ifma;
use super::lanes::Lanes;
use super::lanes::Portable;

const M52: u64 = (1 << 52) - 1;
const M47: u64 = (1 << 47) - 1;

/// A field element in each of eight lanes.
#[derive(Clone, Copy)]
pub(crate) struct Fe<L>(pub [L; 5]);

/// Limbs of a constant (below p).
pub(crate) type Limbs = [u64; 5];

pub(crate) const ONE: Limbs = [1, 0, 0, 0, 0];
pub(crate) const EDWARDS_D: Limbs = [
    3181755047180451,
    1359082766907230,
    2104364726513674,
    4476355785000855,
    90174665927535,
];
pub(crate) const EDWARDS_D2: Limbs = [
    1859910466990425,
    2718165533814461,
    4208729453027348,
    4449111942631214,
    39611843499743,
];
pub(crate) const SQRT_M1: Limbs = [
    3970505234096304,
    117454441778254,
    3936078338671384,
    3923825025616275,
    47842253098945,
];
pub(crate) const INVSQRT_A_MINUS_D: Limbs = [
    2530708553548010,
    410822600550812,
    3942677982555926,
    4444369547933983,
    132407550660527,
];
pub(crate) const SQRT_AD_MINUS_ONE: Limbs = [
    2241493124984347,
    212993959516137,
    551757229825422,
    1278461235678355,
    60924945705859,
];
pub(crate) const ONE_MINUS_D_SQ: Limbs = [
    3388426743169398,
    999275199790631,
    4064756582089121,
    3955465587965403,
    2819422204595,
];
pub(crate) const D_MINUS_ONE_SQ: Limbs = [
    3758862044581152,
    786158893765402,
    733713219624522,
    602621724144373,
    98306222650988,
];

/// 32 p in limbs, each at least the largest limb of an invariant-form
/// element: `a + 32p - b` never wraps.
const P32: Limbs = [(M52 - 18) << 5, M52 << 5, M52 << 5, M52 << 5, M47 << 5];

/// The field operations for one kind of lanes, with the given attributes
/// on every function (the IFMA lanes need their target features enabled).
macro_rules! field_impl {
    ($L:ty, $(#[$a:meta])*) => {
#[allow(dead_code)]
        impl Fe<$L> {
    $(#[$a])*
    pub(crate) fn constant(c: Limbs) -> Self {
        Fe(c.map(<$L>::splat))
    }

    /// The invariant form of limbs below 2^63 each.
    $(#[$a])*
    fn carry(z: [$L; 5]) -> Self {
        let m52 = <$L>::splat(M52);
        let c = z[4].shr::<47>();
        let z4 = z[4].and(<$L>::splat(M47));
        // 19 c = 16 c + 2 c + c.
        let z0 = z[0].add(c.shl::<4>()).add(c.shl::<1>()).add(c);
        let z1 = z[1].add(z0.shr::<52>());
        let z2 = z[2].add(z1.shr::<52>());
        let z3 = z[3].add(z2.shr::<52>());
        let z4 = z4.add(z3.shr::<52>());
        Fe([z0.and(m52), z1.and(m52), z2.and(m52), z3.and(m52), z4])
    }

    $(#[$a])*
    pub(crate) fn add(&self, o: &Self) -> Self {
        Self::carry(core::array::from_fn(|i| self.0[i].add(o.0[i])))
    }

    $(#[$a])*
    pub(crate) fn sub(&self, o: &Self) -> Self {
        Self::carry(core::array::from_fn(|i| {
            self.0[i].add(<$L>::splat(P32[i])).sub(o.0[i])
        }))
    }

    $(#[$a])*
    pub(crate) fn neg(&self) -> Self {
        Self::carry(core::array::from_fn(|i| <$L>::splat(P32[i]).sub(self.0[i])))
    }

    $(#[$a])*
    pub(crate) fn mul(&self, o: &Self) -> Self {
        let (a, b) = (&self.0, &o.0);
        let mut z = [<$L>::splat(0); 10];
        for i in 0..5 {
            for j in 0..5 {
                z[i + j] = z[i + j].madd52lo(a[i], b[j]);
                z[i + j + 1] = z[i + j + 1].madd52hi(a[i], b[j]);
            }
        }
        Self::reduce_columns(z)
    }

    /// The invariant form of ten 52-bit-radix columns, each below 2^57
    /// (the value below 2^512).
    $(#[$a])*
    fn reduce_columns(z: [$L; 10]) -> Self {
        // Columns 5..9 weigh 2^260 = 608 (mod p) times columns 0..4. Each
        // column is below 2^56: split at 52 bits and fold both parts.
        let m52 = <$L>::splat(M52);
        let k = <$L>::splat(608);
        let mut r = [z[0], z[1], z[2], z[3], z[4], <$L>::splat(0)];
        for i in 0..5 {
            let lo = z[i + 5].and(m52);
            let hi = z[i + 5].shr::<52>();
            r[i] = r[i].madd52lo(lo, k);
            r[i + 1] = r[i + 1].madd52hi(lo, k).madd52lo(hi, k);
        }
        // r[5] (weight 2^260) is small.
        r[0] = r[0].madd52lo(r[5], k);
        Self::carry([r[0], r[1], r[2], r[3], r[4]])
    }

    $(#[$a])*
    pub(crate) fn square(&self) -> Self {
        // The cross products once, doubled, then the squares.
        let a = &self.0;
        let mut z = [<$L>::splat(0); 10];
        for i in 0..5 {
            for j in i + 1..5 {
                z[i + j] = z[i + j].madd52lo(a[i], a[j]);
                z[i + j + 1] = z[i + j + 1].madd52hi(a[i], a[j]);
            }
        }
        let mut z = z.map(|c| c.shl::<1>());
        for i in 0..5 {
            z[2 * i] = z[2 * i].madd52lo(a[i], a[i]);
            z[2 * i + 1] = z[2 * i + 1].madd52hi(a[i], a[i]);
        }
        Self::reduce_columns(z)
    }

    /// `self^(2^k)`, k >= 1.
    $(#[$a])*
    pub(crate) fn pow2k(&self, k: u32) -> Self {
        let mut x = self.square();
        for _ in 1..k {
            x = x.square();
        }
        x
    }

    /// `self^((p - 5) / 8) = self^(2^252 - 3)`.
    $(#[$a])*
    pub(crate) fn pow_p58(&self) -> Self {
        let x = self;
        let t0 = x.square();
        let t1 = t0.pow2k(2);
        let t2 = x.mul(&t1);
        let t3 = t0.mul(&t2);
        let t4 = t3.square();
        let t5 = t2.mul(&t4);
        let t7 = t5.pow2k(5).mul(&t5);
        let t9 = t7.pow2k(10).mul(&t7);
        let t11 = t9.pow2k(20).mul(&t9);
        let t13 = t11.pow2k(10).mul(&t7);
        let t15 = t13.pow2k(50).mul(&t13);
        let t17 = t15.pow2k(100).mul(&t15);
        let t19 = t17.pow2k(50).mul(&t13);
        t19.pow2k(2).mul(x)
    }

    /// The fully reduced limbs (the value below p).
    $(#[$a])*
    pub(crate) fn canonical(&self) -> [$L; 5] {
        let m52 = <$L>::splat(M52);
        // Below 2^255 + 2^210 after one more carry, so below 2 p.
        let f = Self::carry(self.0);
        let mut c = f.0[0].add(<$L>::splat(19)).shr::<52>();
        for i in 1..4 {
            c = f.0[i].add(c).shr::<52>();
        }
        let q = f.0[4].add(c).shr::<47>();
        let z0 = f.0[0].add(q.shl::<4>()).add(q.shl::<1>()).add(q);
        let z1 = f.0[1].add(z0.shr::<52>());
        let z2 = f.0[2].add(z1.shr::<52>());
        let z3 = f.0[3].add(z2.shr::<52>());
        let z4 = f.0[4].add(z3.shr::<52>());
        [
            z0.and(m52),
            z1.and(m52),
            z2.and(m52),
            z3.and(m52),
            z4.and(<$L>::splat(M47)),
        ]
    }

    /// The canonical little-endian encoding of each lane, as four words.
    $(#[$a])*
    pub(crate) fn as_words(&self) -> [[u64; 8]; 4] {
        let l = self.canonical().map(<$L>::to_array);
        let mut w = [[0u64; 8]; 4];
        for i in 0..8 {
            w[0][i] = l[0][i] | (l[1][i] << 52);
            w[1][i] = (l[1][i] >> 12) | (l[2][i] << 40);
            w[2][i] = (l[2][i] >> 24) | (l[3][i] << 28);
            w[3][i] = (l[3][i] >> 36) | (l[4][i] << 16);
        }
        w
    }

    /// From four little-endian words per lane, ignoring bit 255 (as
    /// curve25519-dalek's `FieldElement::from_bytes`).
    $(#[$a])*
    pub(crate) fn from_words(w: &[[u64; 8]; 4]) -> Self {
        let m52 = <$L>::splat(M52);
        let w = w.map(<$L>::from_array);
        Fe([
            w[0].and(m52),
            w[0].shr::<52>().or(w[1].shl::<12>()).and(m52),
            w[1].shr::<40>().or(w[2].shl::<24>()).and(m52),
            w[2].shr::<28>().or(w[3].shl::<36>()).and(m52),
            w[3].shr::<16>().and(<$L>::splat(M47)),
        ])
    }

    /// All ones in the lanes whose canonical value is odd ("negative").
    $(#[$a])*
    pub(crate) fn is_negative(&self) -> $L {
        let bit = self.canonical()[0].and(<$L>::splat(1));
        <$L>::splat(0).sub(bit)
    }

    /// All ones in the lanes where the values are equal (mod p).
    $(#[$a])*
    pub(crate) fn ct_eq(&self, o: &Self) -> $L {
        let d = self.sub(o).canonical();
        d[0].or(d[1]).or(d[2]).or(d[3]).or(d[4]).eq_mask(<$L>::splat(0))
    }

    $(#[$a])*
    pub(crate) fn is_zero(&self) -> $L {
        let d = self.canonical();
        d[0].or(d[1]).or(d[2]).or(d[3]).or(d[4]).eq_mask(<$L>::splat(0))
    }

    /// `a` in the lanes where `m` is set, `b` elsewhere.
    $(#[$a])*
    pub(crate) fn select(m: $L, a: &Self, b: &Self) -> Self {
        Fe(core::array::from_fn(|i| <$L>::select(m, a.0[i], b.0[i])))
    }

    $(#[$a])*
    pub(crate) fn cond_neg(&self, m: $L) -> Self {
        Self::select(m, &self.neg(), self)
    }

    /// `(was_nonzero_square, r)` of curve25519-dalek's `sqrt_ratio_i(u, v)`:
    /// the non-negative `sqrt(u / v)` or `sqrt(i u / v)`.
    $(#[$a])*
    pub(crate) fn sqrt_ratio_i(u: &Self, v: &Self) -> ($L, Self) {
        let v3 = v.square().mul(v);
        let v7 = v3.square().mul(v);
        let r = u.mul(&v3).mul(&u.mul(&v7).pow_p58());
        let check = v.mul(&r.square());
        let i = Self::constant(SQRT_M1);
        let neg_u = u.neg();
        let correct = check.ct_eq(u);
        let flipped = check.ct_eq(&neg_u);
        let flipped_i = check.ct_eq(&neg_u.mul(&i));
        let r = Self::select(flipped.or(flipped_i), &i.mul(&r), &r);
        let r = r.cond_neg(r.is_negative());
        (correct.or(flipped), r)
    }
}
    };
}

field_impl!(Portable, #[inline]);
#[cfg(target_arch = "x86_64")]
field_impl!(Ifma, #[inline] #[target_feature(enable = "avx512f,avx512ifma")]);
