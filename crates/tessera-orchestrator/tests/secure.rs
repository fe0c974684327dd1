//! The secure-aggregation stages on virtual time, with in-process members
//! and no processes: the recovered sum against a plain sum, dropouts,
//! deadlines, and hostile messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_core::{ParameterSet, Tensor, Timestamp, derive_key};
use tessera_orchestrator::Effect;
use tessera_orchestrator::secure::{Message, Poll, Refused, SecureEffect, SecureRound, Stage};
use tessera_secagg::{
    AdvertiseKeys, Client, Ed25519Directory, Ed25519Signer, MaskedInput, Metadata, RoundParams,
    SecAggError, SecureAggregationConfig, masked_dimension,
};

const ROUND: u32 = 7;
const LIVENESS: Duration = Duration::from_secs(10);
const N_VALUES: usize = 6;

struct Member {
    name: String,
    id: u32,
    client: Client,
    signer: Ed25519Signer,
    keys: Option<AdvertiseKeys>,
    values: Vec<f32>,
    meta: Metadata,
}

struct Setup {
    round: SecureRound,
    members: Vec<Member>,
    directory: Ed25519Directory,
    params: RoundParams,
    layout: ParameterSet,
}

fn t(seconds: f64) -> Timestamp {
    Timestamp::from_secs_f64(seconds)
}

fn setup(n: u32) -> Setup {
    let ids: Vec<u32> = (0..n).collect();
    let params = SecureAggregationConfig::default()
        .round_params(ROUND, &ids, [9; 32], masked_dimension(N_VALUES))
        .unwrap();
    let mut directory = Ed25519Directory::new();
    let members: Vec<Member> = ids
        .iter()
        .map(|&id| {
            let signer = Ed25519Signer::from_secret(derive_key(1, &[u64::from(id), 1]));
            directory.insert(id, signer.public()).unwrap();
            let (client, keys) = Client::new(
                id,
                params.clone(),
                derive_key(1, &[u64::from(id), 2]),
                &signer,
            )
            .unwrap();
            // Distinct values well inside the clipping range.
            let values = (0..N_VALUES)
                .map(|i| ((id as f32 + 1.0) * 0.01 * (i as f32 - 2.5)).clamp(-0.9, 0.9))
                .collect();
            Member {
                name: format!("site-{id}"),
                id,
                client,
                signer,
                keys: Some(keys),
                values,
                meta: Metadata {
                    n_examples: 10 + u64::from(id),
                    train_loss: 0.5 + f64::from(id) * 0.125,
                    n_steps: 3 + u64::from(id),
                },
            }
        })
        .collect();
    let index: BTreeMap<String, u32> = members.iter().map(|m| (m.name.clone(), m.id)).collect();
    let (round, effects) =
        SecureRound::open(t(0.0), ROUND, index, params.clone(), LIVENESS).unwrap();
    assert_eq!(effects, vec![Effect::Wake(round.deadline())]);
    assert!(round.deadline() > t(10.0));
    let mut layout = ParameterSet::new();
    layout.push("w", Tensor::zeros(vec![2, 3])).unwrap();
    Setup {
        round,
        members,
        directory,
        params,
        layout,
    }
}

impl Setup {
    fn member(&mut self, name: &str) -> &mut Member {
        self.members.iter_mut().find(|m| m.name == name).unwrap()
    }

    fn send_keys(&mut self, now: Timestamp, who: &[&str]) -> Vec<SecureEffect> {
        let mut effects = Vec::new();
        for name in who {
            let keys = self.member(name).keys.take().unwrap();
            effects.extend(self.round.receive(now, name, Message::Keys(keys)).unwrap());
        }
        effects
    }

    fn send_shares(&mut self, now: Timestamp, who: &[&str]) -> Vec<SecureEffect> {
        let mut effects = Vec::new();
        for name in who {
            let id = self.round.id_of(name).unwrap();
            let Poll::Keys(keys) = self.round.poll(name, 2).unwrap() else {
                panic!("stage 2 is not open");
            };
            let directory = &self.directory;
            let m = self.members.iter_mut().find(|m| m.id == id).unwrap();
            let shares = m.client.share_keys(&keys, directory).unwrap();
            effects.extend(
                self.round
                    .receive(now, name, Message::Shares(shares))
                    .unwrap(),
            );
        }
        effects
    }

    fn masked(&mut self, name: &str) -> MaskedInput {
        let Poll::Shares(shares) = self.round.poll(name, 3).unwrap() else {
            panic!("stage 3 is not open");
        };
        let m = self.member(name);
        let (values, meta) = (m.values.clone(), m.meta);
        m.client.masked_update(&shares, &values, &meta).unwrap()
    }

    fn send_masked(&mut self, now: Timestamp, who: &[&str]) -> Vec<SecureEffect> {
        let mut effects = Vec::new();
        for name in who {
            let input = self.masked(name);
            effects.extend(
                self.round
                    .receive(now, name, Message::Masked(input))
                    .unwrap(),
            );
        }
        effects
    }

    /// Stages 4 and 5 for everyone whose masked input arrived.
    fn finish_survivors(&mut self, now: Timestamp) {
        let survivors: Vec<String> = self
            .round
            .survivor_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        for name in &survivors {
            let Poll::Unmask(request) = self.round.poll(name, 4).unwrap() else {
                panic!("stage 4 is not open");
            };
            let m = self.member(name);
            let view = m.client.sign_view(&request, &m.signer).unwrap();
            self.round.receive(now, name, Message::View(view)).unwrap();
        }
        for name in &survivors {
            let Poll::Views(views) = self.round.poll(name, 5).unwrap() else {
                panic!("stage 5 is not open");
            };
            let request = self.round.server().unmask_request();
            let directory = &self.directory;
            let id = self.round.id_of(name).unwrap();
            let m = self.members.iter_mut().find(|m| m.id == id).unwrap();
            let response = m.client.unmask(&request, &views, directory).unwrap();
            self.round
                .receive(now, name, Message::Unmask(response))
                .unwrap();
        }
        assert_eq!(self.round.stage(), Stage::Done);
        assert_eq!(self.round.poll(&survivors[0], 6).unwrap(), Poll::Done);
    }

    fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The plain sum of `who`'s values and metadata, computed apart.
    fn plain_sum(&self, who: &[&str]) -> (Vec<f64>, u64, u64, f64) {
        let mut sum = vec![0.0f64; N_VALUES];
        let (mut examples, mut steps, mut loss) = (0, 0, 0.0);
        for m in self
            .members
            .iter()
            .filter(|m| who.contains(&m.name.as_str()))
        {
            for (s, v) in sum.iter_mut().zip(&m.values) {
                *s += f64::from(*v);
            }
            examples += m.meta.n_examples;
            steps += m.meta.n_steps;
            loss += m.meta.train_loss;
        }
        (sum, examples, steps, loss / who.len() as f64)
    }

    fn check_sum(&self, who: &[&str]) {
        let update = self.round.recover(&self.layout, None).unwrap();
        let (sum, examples, steps, loss) = self.plain_sum(who);
        let got: Vec<f32> = update.delta.values().collect();
        // Each value is quantised once per member.
        let tolerance = self.params.step() * who.len() as f64;
        for (g, want) in got.iter().zip(&sum) {
            assert!(
                (f64::from(*g) - want).abs() <= tolerance,
                "{got:?} is not {sum:?}"
            );
        }
        assert_eq!(update.n_examples, examples);
        assert_eq!(update.stats.n_steps, steps);
        assert!((update.stats.mean_train_loss - loss).abs() < 1e-4);
        let mut survivors = self.round.survivor_names();
        survivors.sort_unstable();
        assert_eq!(survivors, who);
    }
}

fn strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

#[test]
fn a_full_round_sums_like_a_plain_sum() {
    let mut s = setup(5);
    let names = s.names();
    let all = strs(&names);
    let effects = s.send_keys(t(1.0), &all);
    assert_eq!(s.round.stage(), Stage::Shares);
    // The last member's keys closed stage 1; stage 2 wakes at its deadline.
    assert_eq!(
        effects,
        vec![Effect::Wake(t(11.0).plus(Duration::from_micros(1)))]
    );
    s.send_shares(t(2.0), &all);
    assert_eq!(s.round.stage(), Stage::Masked);
    s.send_masked(t(3.0), &all);
    assert_eq!(s.round.stage(), Stage::Views);
    s.finish_survivors(t(4.0));
    s.check_sum(&all);
    assert!(s.round.dropped_names().is_empty());
}

#[test]
fn a_member_dropping_after_sharing_keys_is_recovered() {
    let mut s = setup(6);
    let names = s.names();
    let all = strs(&names);
    s.send_keys(t(1.0), &all);
    s.send_shares(t(2.0), &all);
    // site-2 goes quiet after sharing its keys; site-4 says it leaves.
    let survivors = ["site-0", "site-1", "site-3", "site-5"];
    s.send_masked(t(3.0), &survivors);
    s.round.withdraw("site-4");
    assert!(
        s.round.advance(t(5.0)).is_empty(),
        "site-2 is still awaited"
    );
    assert_eq!(s.round.stage(), Stage::Masked);
    let effects = s.round.advance(t(13.5));
    assert_eq!(s.round.stage(), Stage::Views);
    let Some(Effect::Audit(audit)) = effects.first() else {
        panic!("no audit of the dropout: {effects:?}");
    };
    assert_eq!(audit.event, "dropped");
    assert!(audit.detail.contains("site-2"), "{}", audit.detail);
    assert!(!audit.detail.contains("site-4"), "{}", audit.detail);
    s.finish_survivors(t(14.0));
    assert_eq!(s.round.dropped_names(), vec!["site-2", "site-4"]);
    s.check_sum(&survivors);
}

#[test]
fn a_deadline_passing_moves_the_stage_and_names_who_was_missing() {
    let mut s = setup(5);
    s.send_keys(t(1.0), &["site-0", "site-1", "site-2", "site-4"]);
    // Exactly at the liveness period the stage still waits.
    assert!(s.round.advance(t(10.0)).is_empty());
    assert_eq!(s.round.stage(), Stage::Keys);
    let deadline = s.round.deadline();
    let effects = s.round.advance(deadline);
    assert_eq!(s.round.stage(), Stage::Shares);
    assert_eq!(effects.len(), 2, "{effects:?}");
    let Effect::Audit(audit) = &effects[0] else {
        panic!("{effects:?}");
    };
    assert_eq!(audit.event, "dropped");
    assert!(
        audit.detail.contains("stage 1 (keys)") && audit.detail.ends_with("without site-3"),
        "{}",
        audit.detail
    );
    assert_eq!(
        effects[1],
        Effect::Wake(deadline.plus(LIVENESS).plus(Duration::from_micros(1)))
    );
    // The missing member is not waited for again, and its late keys are refused.
    let keys = s.member("site-3").keys.take().unwrap();
    let late = s
        .round
        .receive(deadline, "site-3", Message::Keys(keys))
        .unwrap_err();
    assert!(matches!(late, Refused::Late { stage: 1, .. }), "{late}");
    assert_eq!(
        s.round.poll("site-3", 2).unwrap(),
        Poll::Keys(s.round.server().keys_for(3))
    );
    let rest = ["site-0", "site-1", "site-2", "site-4"];
    s.send_shares(deadline, &rest);
    s.send_masked(deadline, &rest);
    s.finish_survivors(deadline);
    assert!(!s.round.has_joined("site-3"));
    s.check_sum(&rest);
}

#[test]
fn duplicate_and_out_of_stage_messages_are_refused_and_the_round_goes_on() {
    let mut s = setup(5);
    let names = s.names();
    let all = strs(&names);
    let keys = s.member("site-0").keys.clone().unwrap();
    s.send_keys(t(1.0), &["site-0", "site-1"]);
    let twice = s
        .round
        .receive(t(1.0), "site-0", Message::Keys(keys.clone()))
        .unwrap_err();
    assert!(
        matches!(
            twice,
            Refused::Duplicate {
                stage: Stage::Keys,
                ..
            }
        ),
        "{twice}"
    );
    let Effect::Audit(audit) = twice.audit("site-0") else {
        panic!("not an audit");
    };
    assert_eq!(
        (audit.event.as_str(), audit.site.as_deref()),
        ("rejected", Some("site-0"))
    );
    // Another member's keys under its own name.
    let stolen = s
        .round
        .receive(t(1.0), "site-2", Message::Keys(keys.clone()))
        .unwrap_err();
    assert!(
        matches!(stolen, Refused::WrongSender { id: 2, claimed: 0 }),
        "{stolen}"
    );
    let stranger = s
        .round
        .receive(t(1.0), "mallory", Message::Keys(keys))
        .unwrap_err();
    assert!(
        matches!(stranger, Refused::NotInCohort { .. }),
        "{stranger}"
    );
    assert!(s.round.poll("mallory", 1).is_err());
    // A masked input while stage 1 is open.
    let early = s
        .round
        .receive(
            t(1.0),
            "site-1",
            Message::Masked(MaskedInput {
                from: 1,
                values: vec![0; s.params.dimension],
            }),
        )
        .unwrap_err();
    assert!(matches!(early, Refused::Late { stage: 3, .. }), "{early}");
    assert!(matches!(early.audit("site-1"), Effect::Audit(a) if a.event == "late"));
    assert_eq!(s.round.poll("site-1", 3).unwrap(), Poll::Wait);
    assert_eq!(s.round.poll("site-1", 9).unwrap_err(), Refused::NoStage(9));
    assert!(s.round.recover(&s.layout, None).is_err(), "not done yet");
    s.send_keys(t(1.0), &["site-2", "site-3", "site-4"]);
    s.send_shares(t(2.0), &all);
    // A masked input of the wrong size.
    let short = s
        .round
        .receive(
            t(3.0),
            "site-0",
            Message::Masked(MaskedInput {
                from: 0,
                values: vec![0; 3],
            }),
        )
        .unwrap_err();
    assert!(
        matches!(
            short,
            Refused::Protocol(SecAggError::BadMessage { from: 0, .. })
        ),
        "{short}"
    );
    s.send_masked(t(3.0), &all);
    s.finish_survivors(t(4.0));
    s.check_sum(&all);
}

#[test]
fn fewer_survivors_than_the_threshold_fail_the_round_with_a_reason() {
    let mut s = setup(5);
    let names = s.names();
    let all = strs(&names);
    s.send_keys(t(1.0), &all);
    s.send_shares(t(2.0), &all);
    let threshold = s.params.threshold;
    assert!(threshold >= 2, "threshold {threshold}");
    let few: Vec<&str> = all[..threshold - 1].to_vec();
    s.send_masked(t(3.0), &few);
    for name in &all[threshold - 1..] {
        s.round.withdraw(name);
    }
    s.round.advance(t(3.0));
    assert_eq!(s.round.stage(), Stage::Views);
    // The survivors go quiet too: each stage closes at its deadline.
    let mut now = t(3.0);
    while s.round.stage() != Stage::Done {
        now = s.round.deadline();
        s.round.advance(now);
    }
    assert!(now < t(60.0));
    let error = s.round.recover(&s.layout, None).unwrap_err();
    assert!(matches!(error, SecAggError::TooManyDropouts(_)), "{error}");
    assert!(
        error.to_string().contains("fewer than the threshold"),
        "{error}"
    );
}

#[test]
fn members_that_are_not_the_parameters_participants_cannot_open_a_round() {
    let params = SecureAggregationConfig::default()
        .round_params(1, &[0, 1, 2, 3], [0; 32], masked_dimension(2))
        .unwrap();
    let members: BTreeMap<String, u32> = [("a", 0), ("b", 1), ("c", 2), ("d", 2)]
        .map(|(s, i)| (s.to_string(), i))
        .into();
    assert!(SecureRound::open(t(0.0), 1, members, params, LIVENESS).is_err());
}
