//! Noisy membership: exact without noise, noise at the calibrated scale,
//! what a curious sender sees, duplicates, empty sets, malformed messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::collections::HashSet;
use tessera_psi::*;

fn config(sigma: f64) -> NoisyConfig {
    NoisyConfig {
        max_elements: 1 << 16,
        min_query: 16,
        sigma,
    }
}

/// Everything a run leaves each party with, every message through bytes.
struct Run {
    values: Vec<f64>,
    view: SenderView,
    offer: MembershipOffer,
    reblinded: Reblinded,
    query: MembershipQuery,
}

fn run(config: NoisyConfig, r: &[Token], s: &[Token], seed: u64) -> Run {
    let (receiver, query) = NoisyReceiver::start_seeded_for_tests(config, r, seed).unwrap();
    let query = MembershipQuery::from_bytes(&query.to_bytes()).unwrap();
    let (sender, offer) =
        NoisySender::respond_seeded_for_tests(config, s, &query, seed ^ 0xabcd).unwrap();
    let offer = MembershipOffer::from_bytes(&offer.to_bytes()).unwrap();
    let reblinded = receiver.reblind(&offer).unwrap();
    let reblinded = Reblinded::from_bytes(&reblinded.to_bytes()).unwrap();
    let (answers, view) = sender.answer(&reblinded).unwrap();
    let answers = NoisyAnswers::from_bytes(&answers.to_bytes()).unwrap();
    let values = receiver.finish(&answers).unwrap();
    Run {
        values,
        view,
        offer,
        reblinded,
        query,
    }
}

/// The exact membership bit of each of R's prepared tokens.
fn bits(r_ids: &[String], r: &PreparedSet, s_ids: &[String]) -> Vec<f64> {
    let s: HashSet<String> = s_ids.iter().map(|x| normalise(x)).collect();
    r.first_row
        .iter()
        .map(|&row| f64::from(u8::from(s.contains(&normalise(&r_ids[row])))))
        .collect()
}

#[test]
fn without_noise_the_values_are_the_membership_bits() {
    // Partial, full and no overlap; R smaller, equal and larger than S.
    for (ra, sa, seed) in [
        (0..300, 200..700, 1u64),
        (0..100, 0..100, 2),
        (0..50, 50..90, 3),
        (0..1000, 990..1010, 4),
    ] {
        let r_ids = ids(ra);
        let s_ids = ids(sa);
        let (r, s) = (tokens(&r_ids), tokens(&s_ids));
        let out = run(config(0.0), &r.tokens, &s.tokens, seed);
        let want = bits(&r_ids, &r, &s_ids);
        assert_eq!(out.values, want);
        let shared = want.iter().filter(|b| **b == 1.0).count();
        assert_eq!(out.view.matched, shared, "the sender learns |R ∩ S|");
        assert_eq!(out.view.query_len, config(0.0).padded_len(r_ids.len()));
    }
}

#[test]
fn empty_sets_on_either_side() {
    let some = tokens(&ids(0..40));
    let out = run(config(0.0), &[], &some.tokens, 5);
    assert!(out.values.is_empty());
    assert_eq!(out.view.matched, 0);
    assert_eq!(out.view.query_len, 16, "padded to min_query");
    let out = run(config(0.0), &some.tokens, &[], 6);
    assert_eq!(out.values, vec![0.0; 40]);
    assert_eq!(out.offer.count, 0);
    let out = run(config(0.0), &[], &[], 7);
    assert!(out.values.is_empty());
}

#[test]
fn duplicates_count_once_and_repeated_tokens_are_refused() {
    // A patient with three rows at S is one token: its bit is 1, not 3.
    let r_ids = ids(0..20);
    let mut s_ids = ids(10..30);
    s_ids.extend([
        "P-000012".to_string(),
        " p 000012 ".into(),
        "P-000013".into(),
    ]);
    let (r, s) = (tokens(&r_ids), tokens(&s_ids));
    assert_eq!(s.duplicates, 3);
    let out = run(config(0.0), &r.tokens, &s.tokens, 8);
    assert_eq!(out.values, bits(&r_ids, &r, &s_ids));
    assert!(out.values.iter().all(|v| *v == 0.0 || *v == 1.0));
    // Raw repeated tokens are refused on both sides.
    let mut twice = s.tokens.clone();
    twice.push(s.tokens[0]);
    assert!(matches!(
        NoisyReceiver::start_seeded_for_tests(config(0.0), &twice, 1),
        Err(PsiError::DuplicateTokens { .. })
    ));
    let (_, q) = NoisyReceiver::start_seeded_for_tests(config(0.0), &r.tokens, 1).unwrap();
    assert!(matches!(
        NoisySender::respond_seeded_for_tests(config(0.0), &twice, &q, 2),
        Err(PsiError::DuplicateTokens { .. })
    ));
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26, error below 1.5e-7).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Kolmogorov–Smirnov statistic of `xs` against the standard normal.
fn ks(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = phi(x);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

#[test]
fn the_noise_has_the_calibrated_scale() {
    let sigma = 1.7;
    let r_ids = ids(0..4000);
    let s_ids = ids(2000..6000);
    let (r, s) = (tokens(&r_ids), tokens(&s_ids));
    let want = bits(&r_ids, &r, &s_ids);
    let out = run(config(sigma), &r.tokens, &s.tokens, 11);
    let z: Vec<f64> = out
        .values
        .iter()
        .zip(&want)
        .map(|(v, b)| (v - b) / sigma)
        .collect();
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() < 4.0 / n.sqrt(), "mean {mean}");
    // The sample variance of n normals has sd sqrt(2 / n).
    assert!((var - 1.0).abs() < 4.0 * (2.0 / n).sqrt(), "variance {var}");
    // KS at p > 0.01: D below 1.63 / sqrt(n).
    let d = ks(z);
    assert!(d < 1.63 / n.sqrt(), "KS statistic {d}");
    // The exact bit is not recoverable from one value.
    assert!(out.values.iter().all(|v| *v != 0.0 && *v != 1.0));
}

#[test]
fn fresh_runs_draw_fresh_noise_from_the_operating_system() {
    let r = tokens(&ids(0..64));
    let s = tokens(&ids(32..96));
    let c = config(1.0);
    let go = || {
        let (receiver, q) = NoisyReceiver::start(c, &r.tokens).unwrap();
        let (sender, offer) = NoisySender::respond(c, &s.tokens, &q).unwrap();
        let (answers, _) = sender.answer(&receiver.reblind(&offer).unwrap()).unwrap();
        receiver.finish(&answers).unwrap()
    };
    assert_ne!(go(), go());
}

/// Adversary: a curious sender. It knows its own offer order; if R
/// returned the reblinded points in that order (or any order tied to it),
/// the position of the one matching entry would name the shared record.
/// Sorted by their encoding under R's secret, it falls anywhere.
#[test]
fn a_curious_sender_cannot_tell_which_of_its_records_matched() {
    let s_ids = ids(0..8);
    let s = tokens(&s_ids);
    let target = tokens(&ids(3..4)); // R shares exactly one of S's records
    let runs = 240u64;
    let mut same_index = 0;
    let mut seen_at = HashSet::new();
    let mut seen_query_pos = HashSet::new();
    for seed in 0..runs {
        let c = config(0.0);
        let (receiver, q) = NoisyReceiver::start_seeded_for_tests(c, &target.tokens, seed).unwrap();
        let beta_seed = 1_000 + seed;
        let (sender, offer) =
            NoisySender::respond_seeded_for_tests(c, &s.tokens, &q, beta_seed).unwrap();
        // Where S's own record 3 sits in the offer (S can compute this).
        let (_, alone) = NoisySender::respond_seeded_for_tests(
            c,
            std::slice::from_ref(&s.tokens[3]),
            &q,
            beta_seed,
        )
        .unwrap();
        let offer_index = offer
            .points
            .chunks(32)
            .position(|p| p == &alone.points[..])
            .unwrap();
        let reblinded = receiver.reblind(&offer).unwrap();
        // Which reblinded entry matched: S learns it by comparing.
        let (answers, view) = sender.answer(&reblinded).unwrap();
        assert_eq!(view.matched, 1);
        let pos = answers.values.iter().position(|v| *v == 1.0).unwrap();
        seen_query_pos.insert(pos);
        // The matched entry's index among the sorted reblinded points:
        // recompute by reblinding the lone record alone.
        let lone = MembershipOffer {
            count: 1,
            points: alone.points.clone(),
        };
        let lone = receiver.reblind(&lone).unwrap();
        let matched_index = reblinded
            .points
            .chunks(32)
            .position(|p| p == &lone.points[..])
            .unwrap();
        seen_at.insert(matched_index);
        if matched_index == offer_index {
            same_index += 1;
        }
        assert!(reblinded.points.chunks(32).is_sorted());
    }
    // Uniform over 8 slots: 30 expected, far from 240.
    assert!(same_index < 55, "{same_index} of {runs}");
    assert_eq!(seen_at.len(), 8, "the matched entry visits every slot");
    // And R's one real point is anywhere among the 16 query positions.
    assert!(seen_query_pos.len() >= 14, "{seen_query_pos:?}");
}

#[test]
fn the_query_hides_the_receiver_count_up_to_padding() {
    let c = config(0.0);
    for (n, want) in [(0usize, 16usize), (5, 16), (16, 16), (17, 32), (1000, 1024)] {
        let r = tokens(&ids(0..n));
        let (_, q) = NoisyReceiver::start_seeded_for_tests(c, &r.tokens, 3).unwrap();
        assert_eq!(q.count as usize, want);
        assert_eq!(q.points.len(), want * 32);
        // 32 bytes per point each way, plus framing.
        assert_eq!(q.to_bytes().len(), want * 32 + 2 + 4 + 8);
    }
}

#[test]
fn malformed_messages_are_refused_naming_what_is_wrong() {
    let c = config(0.5);
    let r = tokens(&ids(0..20));
    let s = tokens(&ids(10..30));
    let (receiver, q) = NoisyReceiver::start_seeded_for_tests(c, &r.tokens, 1).unwrap();

    // A query below min_query, one with a repeated point, one with a bad point.
    let small = MembershipQuery {
        count: 4,
        points: q.points[..4 * 32].to_vec(),
    };
    assert!(matches!(
        NoisySender::respond_seeded_for_tests(c, &s.tokens, &small, 2),
        Err(PsiError::TooFewElements { .. })
    ));
    let mut repeated = q.clone();
    let first = repeated.points[..32].to_vec();
    repeated.points[32..64].copy_from_slice(&first);
    assert!(matches!(
        NoisySender::respond_seeded_for_tests(c, &s.tokens, &repeated, 2),
        Err(PsiError::Malformed { .. })
    ));
    let mut bad = q.clone();
    bad.points[5 * 32..6 * 32].copy_from_slice(&[0xff; 32]);
    assert!(matches!(
        NoisySender::respond_seeded_for_tests(c, &s.tokens, &bad, 2),
        Err(PsiError::InvalidPoint { index: 5, .. })
    ));
    let mut lying = q.clone();
    lying.count += 1;
    assert!(matches!(
        NoisySender::respond_seeded_for_tests(c, &s.tokens, &lying, 2),
        Err(PsiError::WrongLength { .. })
    ));
    let huge = MembershipQuery {
        count: u32::MAX,
        points: vec![],
    };
    assert!(matches!(
        NoisySender::respond_seeded_for_tests(c, &s.tokens, &huge, 2),
        Err(PsiError::TooManyElements { .. })
    ));

    let (sender, offer) = NoisySender::respond_seeded_for_tests(c, &s.tokens, &q, 2).unwrap();
    // An offer with the identity or a repeat is refused by R.
    let mut ident = offer.clone();
    ident.points[..32].copy_from_slice(&[0; 32]);
    assert!(receiver.reblind(&ident).is_err());
    let mut rep = offer.clone();
    let first = rep.points[..32].to_vec();
    rep.points[32..64].copy_from_slice(&first);
    assert!(receiver.reblind(&rep).is_err());

    // A reblinded list one short, or with a repeat, is refused by S.
    let good = receiver.reblind(&offer).unwrap();
    let short = Reblinded {
        count: good.count - 1,
        points: good.points[32..].to_vec(),
    };
    let sender_view = |r: &Reblinded| {
        let (sender, _) = NoisySender::respond_seeded_for_tests(c, &s.tokens, &q, 2).unwrap();
        sender.answer(r).map(|_| ())
    };
    assert!(matches!(
        sender_view(&short),
        Err(PsiError::Malformed { .. })
    ));
    let mut rep = good.clone();
    let first = rep.points[..32].to_vec();
    rep.points[32..64].copy_from_slice(&first);
    assert!(sender_view(&rep).is_err());

    // Answers of the wrong length or not finite are refused by R.
    let (answers, _) = sender.answer(&good).unwrap();
    let mut fewer = answers.clone();
    fewer.values.pop();
    let (receiver2, _) = NoisyReceiver::start_seeded_for_tests(c, &r.tokens, 1).unwrap();
    assert!(matches!(
        receiver2.finish(&fewer),
        Err(PsiError::Malformed { .. })
    ));
    let mut nan = answers.clone();
    nan.values[0] = f64::NAN;
    let (receiver3, _) = NoisyReceiver::start_seeded_for_tests(c, &r.tokens, 1).unwrap();
    assert!(receiver3.finish(&nan).is_err());
    // Framing: truncated, trailing bytes, another message's tag.
    let bytes = answers.to_bytes();
    assert!(NoisyAnswers::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(NoisyAnswers::from_bytes(&longer).is_err());
    assert!(Reblinded::from_bytes(&q.to_bytes()).is_err());
    // Configurations out of range.
    for bad in [
        NoisyConfig { sigma: -1.0, ..c },
        NoisyConfig {
            sigma: f64::NAN,
            ..c
        },
        NoisyConfig { min_query: 0, ..c },
        NoisyConfig {
            max_elements: 0,
            ..c
        },
    ] {
        assert!(matches!(
            NoisyReceiver::start_seeded_for_tests(bad, &r.tokens, 1),
            Err(PsiError::Config(_))
        ));
    }
}

#[test]
fn occurrence_tokens_count_rows_up_to_a_cap() {
    // S holds patient 1 three times, patient 2 once; R asks for up to 2
    // occurrences of each: the sums are min(rows, 2).
    let key = key();
    let t = |id: &str| prepare(&key, &[id]).unwrap().tokens[0];
    let cap = 2;
    let s: Vec<Token> = [("a", 3u32), ("b", 1)]
        .iter()
        .flat_map(|(id, m)| (0..(*m).min(cap)).map(move |k| occurrence_token(&t(id), k)))
        .collect();
    let r: Vec<Token> = ["a", "b", "c"]
        .iter()
        .flat_map(|id| (0..cap).map(move |k| occurrence_token(&t(id), k)))
        .collect();
    let out = run(config(0.0), &r, &s, 3);
    let sums: Vec<f64> = out
        .values
        .chunks(cap as usize)
        .map(|c| c.iter().sum())
        .collect();
    assert_eq!(sums, vec![2.0, 1.0, 0.0]);
    assert_eq!(out.query.count, 16);
    assert_eq!(out.reblinded.count, 3);
}
