//! A round's cohort drawn with weights (`contribution.selection =
//! "reputation"`): weighted sampling without replacement by exponential
//! keys (Efraimidis and Spirakis, 2006): each site draws `u` uniform in
//! (0, 1] and the `size` largest `ln(u) / w` are taken, which draws each
//! next site with probability its weight over the weights left.

use std::collections::BTreeMap;

use tessera_core::{ParticipantId, SeededRng};

/// The smallest weight a site is drawn with: a weight of 0 would shut it
/// out for good, and its attribution could then never recover.
pub const MIN_WEIGHT: f64 = 1e-3;

/// `size` of `everyone` (sorted), weighted by `weights` (a site without
/// one: 1; non-finite or below [`MIN_WEIGHT`]: that floor), in name order.
pub(super) fn weighted_draw(
    rng: &mut SeededRng,
    everyone: Vec<ParticipantId>,
    weights: &BTreeMap<ParticipantId, f64>,
    size: usize,
) -> Vec<ParticipantId> {
    let mut keyed: Vec<(f64, ParticipantId)> = everyone
        .into_iter()
        .map(|p| {
            let w = weights
                .get(&p)
                .copied()
                .filter(|w| w.is_finite())
                .unwrap_or(1.0)
                .max(MIN_WEIGHT);
            // In (0, 1]: the logarithm is finite.
            let u = 1.0 - rng.next_f64();
            (u.ln() / w, p)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut drawn: Vec<ParticipantId> = keyed.into_iter().take(size).map(|(_, p)| p).collect();
    drawn.sort();
    drawn
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drawn often enough, each site's share of the draws of one is its
    /// share of the weights.
    #[test]
    fn one_site_is_drawn_in_proportion_to_its_weight() {
        let sites: Vec<ParticipantId> = ["a", "b", "c"]
            .iter()
            .map(|s| ParticipantId::new(*s))
            .collect();
        let weights: BTreeMap<ParticipantId, f64> =
            sites.iter().cloned().zip([1.0, 2.0, 7.0]).collect();
        let mut rng = SeededRng::new(11);
        let mut drawn = [0u32; 3];
        let n = 20_000;
        for _ in 0..n {
            let one = weighted_draw(&mut rng, sites.clone(), &weights, 1);
            drawn[sites.iter().position(|s| *s == one[0]).unwrap_or(0)] += 1;
        }
        for (count, share) in drawn.iter().zip([0.1, 0.2, 0.7]) {
            let seen = f64::from(*count) / f64::from(n);
            assert!((seen - share).abs() < 0.015, "{drawn:?}");
        }
    }

    #[test]
    fn the_draw_is_a_set_of_the_size_asked_and_a_zero_weight_is_floored() {
        let sites: Vec<ParticipantId> = (0..10)
            .map(|i| ParticipantId::new(format!("s{i}")))
            .collect();
        let mut weights: BTreeMap<ParticipantId, f64> = BTreeMap::new();
        weights.insert(sites[0].clone(), 0.0);
        weights.insert(sites[1].clone(), f64::NAN);
        let mut rng = SeededRng::new(3);
        let mut zero_drawn = 0;
        for _ in 0..2000 {
            let drawn = weighted_draw(&mut rng, sites.clone(), &weights, 9);
            assert_eq!(drawn.len(), 9);
            assert!(drawn.windows(2).all(|w| w[0] < w[1]));
            zero_drawn += usize::from(drawn.contains(&sites[0]));
        }
        // Nine of ten drawn: the floored site is the one left out almost
        // always, but not always.
        assert!(zero_drawn > 0 && zero_drawn < 100, "{zero_drawn}");
    }
}
