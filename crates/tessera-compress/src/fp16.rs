//! IEEE 754 binary16 conversions, round to nearest even (no dependency, so
//! the bits on the wire never change with a crate's release).

/// The binary16 value nearest `value` (ties to even); NaN stays NaN,
/// overflow becomes infinity.
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x007f_ffff;
    if exponent == 0xff {
        // Infinity or NaN (keep a quiet NaN).
        return sign | 0x7c00 | if mantissa != 0 { 0x0200 } else { 0 };
    }
    let unbiased = exponent - 127;
    if unbiased > 15 {
        return sign | 0x7c00;
    }
    if unbiased >= -14 {
        // Normal in binary16: keep 10 of 23 mantissa bits, rounding the 13 dropped.
        let half_exponent = (unbiased + 15) as u32;
        let mut out = (half_exponent << 10) | (mantissa >> 13);
        let dropped = mantissa & 0x1fff;
        if dropped > 0x1000 || (dropped == 0x1000 && (out & 1) == 1) {
            out += 1; // may carry into the exponent, up to infinity: correct
        }
        return sign | out as u16;
    }
    if unbiased < -25 {
        return sign; // below half the smallest subnormal
    }
    // Subnormal in binary16: value = m * 2^-24 with the implicit bit made explicit.
    let full = mantissa | 0x0080_0000;
    let shift = (-14 - unbiased) as u32 + 13;
    let mut out = full >> shift;
    let dropped = full & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if dropped > half || (dropped == half && (out & 1) == 1) {
        out += 1;
    }
    sign | out as u16
}

/// The `f32` equal to a binary16 value (exact).
pub fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half & 0x8000) << 16;
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x03ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x03ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_survives_the_round_trip() {
        for half in 0..=u16::MAX {
            let value = f16_to_f32(half);
            if value.is_nan() {
                assert!(f16_to_f32(f32_to_f16(value)).is_nan());
            } else {
                assert_eq!(f32_to_f16(value), half, "{half:#06x} -> {value}");
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up to infinity
        assert_eq!(f32_to_f16(5.960_464_5e-8), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16(1e-9), 0x0000);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    /// Against an independent rule: the nearest of all finite halves, ties to even.
    #[test]
    fn rounds_to_the_nearest_half() {
        let mut finite: Vec<(f64, u16)> = (0..0x7c00u16)
            .map(|h| (f64::from(f16_to_f32(h)), h))
            .collect();
        finite.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let value = f32::from_bits(x & 0x7fff_ffff);
            if !value.is_finite() || value >= 65504.0 {
                continue;
            }
            let v = f64::from(value);
            let i = finite.partition_point(|p| p.0 < v);
            let candidates = [i.saturating_sub(1), i.min(finite.len() - 1)];
            let best = candidates
                .iter()
                .map(|&j| finite[j])
                .min_by(|a, b| {
                    (a.0 - v)
                        .abs()
                        .total_cmp(&(b.0 - v).abs())
                        .then((a.1 & 1).cmp(&(b.1 & 1)))
                })
                .map(|p| p.1);
            assert_eq!(Some(f32_to_f16(value)), best, "{value:e}");
        }
    }
}
