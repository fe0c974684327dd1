//! Eight 64-bit lanes: the one abstraction the field arithmetic is written
//! over. [`Portable`] emulates the lanes with plain integers (tests, and a
//! reference for the vector code); [`Ifma`] is one AVX-512 register, with
//! the IFMA 52-bit multiply-accumulate instructions.

/// Eight unsigned 64-bit lanes. Masks are lanes of all ones or all zeros.
pub(crate) trait Lanes: Copy {
    fn splat(x: u64) -> Self;
    fn from_array(a: [u64; 8]) -> Self;
    fn to_array(self) -> [u64; 8];
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn and(self, o: Self) -> Self;
    fn or(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
    fn shr<const N: u32>(self) -> Self;
    fn shl<const N: u32>(self) -> Self;
    /// `self + low 52 bits of (a mod 2^52) (b mod 2^52)`.
    fn madd52lo(self, a: Self, b: Self) -> Self;
    /// `self + high 52 bits of the 104-bit (a mod 2^52) (b mod 2^52)`.
    fn madd52hi(self, a: Self, b: Self) -> Self;
    /// All ones where the lanes are equal, zeros elsewhere.
    fn eq_mask(self, o: Self) -> Self;
    /// `a` where the mask is set, `b` elsewhere.
    #[inline(always)]
    fn select(m: Self, a: Self, b: Self) -> Self {
        b.xor(a.xor(b).and(m))
    }
}

const M52: u64 = (1 << 52) - 1;

/// The lanes as an array of integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Portable(pub [u64; 8]);

impl Portable {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(u64, u64) -> u64) -> Self {
        let mut r = [0u64; 8];
        for (i, x) in r.iter_mut().enumerate() {
            *x = f(self.0[i], o.0[i]);
        }
        Portable(r)
    }
}

impl Lanes for Portable {
    #[inline(always)]
    fn splat(x: u64) -> Self {
        Portable([x; 8])
    }
    #[inline(always)]
    fn from_array(a: [u64; 8]) -> Self {
        Portable(a)
    }
    #[inline(always)]
    fn to_array(self) -> [u64; 8] {
        self.0
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.map2(o, u64::wrapping_add)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.map2(o, u64::wrapping_sub)
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        self.map2(o, |a, b| a & b)
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        self.map2(o, |a, b| a | b)
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        self.map2(o, |a, b| a ^ b)
    }
    #[inline(always)]
    fn shr<const N: u32>(self) -> Self {
        self.map2(self, |a, _| a >> N)
    }
    #[inline(always)]
    fn shl<const N: u32>(self) -> Self {
        self.map2(self, |a, _| a << N)
    }
    #[inline(always)]
    fn madd52lo(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for (i, x) in r.iter_mut().enumerate() {
            let p = u128::from(a.0[i] & M52) * u128::from(b.0[i] & M52);
            *x = x.wrapping_add(p as u64 & M52);
        }
        Portable(r)
    }
    #[inline(always)]
    fn madd52hi(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for (i, x) in r.iter_mut().enumerate() {
            let p = u128::from(a.0[i] & M52) * u128::from(b.0[i] & M52);
            *x = x.wrapping_add((p >> 52) as u64);
        }
        Portable(r)
    }
    #[inline(always)]
    fn eq_mask(self, o: Self) -> Self {
        self.map2(o, |a, b| 0u64.wrapping_sub(u64::from(a == b)))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use ifma::Ifma;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod ifma {
    //! The AVX-512 lanes. Every method is inlined into the engine's entry
    //! points, which carry `#[target_feature(enable = "avx512f,avx512ifma")]`
    //! and are reached only after runtime detection of both features: that
    //! detection is what makes the `unsafe` calls below sound.
    use super::Lanes;
    use core::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Ifma(__m512i);

    impl Lanes for Ifma {
        #[inline(always)]
        fn splat(x: u64) -> Self {
            Ifma(unsafe { _mm512_set1_epi64(x as i64) })
        }
        #[inline(always)]
        fn from_array(a: [u64; 8]) -> Self {
            Ifma(unsafe { _mm512_loadu_si512(a.as_ptr().cast()) })
        }
        #[inline(always)]
        fn to_array(self) -> [u64; 8] {
            let mut a = [0u64; 8];
            unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), self.0) };
            a
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Ifma(unsafe { _mm512_add_epi64(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Ifma(unsafe { _mm512_sub_epi64(self.0, o.0) })
        }
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            Ifma(unsafe { _mm512_and_si512(self.0, o.0) })
        }
        #[inline(always)]
        fn or(self, o: Self) -> Self {
            Ifma(unsafe { _mm512_or_si512(self.0, o.0) })
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            Ifma(unsafe { _mm512_xor_si512(self.0, o.0) })
        }
        #[inline(always)]
        fn shr<const N: u32>(self) -> Self {
            Ifma(unsafe { _mm512_srli_epi64::<N>(self.0) })
        }
        #[inline(always)]
        fn shl<const N: u32>(self) -> Self {
            Ifma(unsafe { _mm512_slli_epi64::<N>(self.0) })
        }
        #[inline(always)]
        fn madd52lo(self, a: Self, b: Self) -> Self {
            Ifma(unsafe { _mm512_madd52lo_epu64(self.0, a.0, b.0) })
        }
        #[inline(always)]
        fn madd52hi(self, a: Self, b: Self) -> Self {
            Ifma(unsafe { _mm512_madd52hi_epu64(self.0, a.0, b.0) })
        }
        #[inline(always)]
        fn eq_mask(self, o: Self) -> Self {
            Ifma(unsafe {
                let m = _mm512_cmpeq_epi64_mask(self.0, o.0);
                _mm512_maskz_mov_epi64(m, _mm512_set1_epi64(-1))
            })
        }
    }
}
