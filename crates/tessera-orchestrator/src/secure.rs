//! Secure aggregation's stages around a [`tessera_secagg::Server`], written
//! once for simulation and deployment.
//!
//! A [`SecureRound`] relays a cohort's SecAgg+ round: stage by stage
//! ([`Stage`]) it takes each member's [`Message`], waits for every member
//! still in the stage, and closes the stage when all of them have answered
//! or its deadline (the start of the stage plus the liveness period) has
//! passed; whoever has not answered by then has dropped, and the protocol
//! recovers the sum of the others. After the last stage [`SecureRound::recover`]
//! gives the survivors' summed update, decoded.
//!
//! The piece never reads a clock: every method that can move the round takes
//! `now`, and a stage's deadline comes back as [`Effect::Wake`]. Nothing of
//! a secure round is persisted ([`Persist`] has no values): after a restart
//! its round is reopened and the cohort trains again. Hostile input (an
//! unknown member, a message for another stage, a second message in one
//! stage, a wrong size) is refused with a [`Refused`] that says why; the
//! round goes on without it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tessera_core::{FitStats, ParameterSet, Timestamp, Update};
use tessera_engine::Plan;
use tessera_secagg::{
    AdvertiseKeys, MaskedInput, RoundParams, SecAggError, Server, ShareKeys, SignedView,
    UnmaskRequest, UnmaskResponse, masked_dimension, split_sum,
};
use thiserror::Error;

use crate::Effect;

/// The stages of a secure round, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// 1: members advertise their public keys.
    Keys,
    /// 2: members send their encrypted key shares.
    Shares,
    /// 3: members send their masked inputs.
    Masked,
    /// 4: survivors sign the survivor and dropped sets (the consistency check).
    Views,
    /// 5: survivors reveal the shares that remove the masks.
    Unmask,
    /// 6: the round is over; the sum can be recovered.
    Done,
}

impl Stage {
    /// The stage's number on the wire (1 keys ... 6 done).
    pub fn number(self) -> u32 {
        match self {
            Stage::Keys => 1,
            Stage::Shares => 2,
            Stage::Masked => 3,
            Stage::Views => 4,
            Stage::Unmask => 5,
            Stage::Done => 6,
        }
    }

    /// The stage numbered `number`, if one.
    pub fn from_number(number: u32) -> Option<Stage> {
        [
            Stage::Keys,
            Stage::Shares,
            Stage::Masked,
            Stage::Views,
            Stage::Unmask,
            Stage::Done,
        ]
        .into_iter()
        .find(|s| s.number() == number)
    }

    /// What its members send, in words.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Keys => "keys",
            Stage::Shares => "key shares",
            Stage::Masked => "masked inputs",
            Stage::Views => "signed views",
            Stage::Unmask => "unmasking shares",
            Stage::Done => "nothing (done)",
        }
    }

    fn next(self) -> Stage {
        match self {
            Stage::Keys => Stage::Shares,
            Stage::Shares => Stage::Masked,
            Stage::Masked => Stage::Views,
            Stage::Views => Stage::Unmask,
            Stage::Unmask | Stage::Done => Stage::Done,
        }
    }
}

/// A member's message, one per stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Stage 1.
    Keys(AdvertiseKeys),
    /// Stage 2.
    Shares(ShareKeys),
    /// Stage 3.
    Masked(MaskedInput),
    /// Stage 4.
    View(SignedView),
    /// Stage 5.
    Unmask(UnmaskResponse),
}

impl Message {
    /// The stage it belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            Message::Keys(_) => Stage::Keys,
            Message::Shares(_) => Stage::Shares,
            Message::Masked(_) => Stage::Masked,
            Message::View(_) => Stage::Views,
            Message::Unmask(_) => Stage::Unmask,
        }
    }

    /// The id its sender claims.
    pub fn from(&self) -> u32 {
        match self {
            Message::Keys(m) => m.from,
            Message::Shares(m) => m.from,
            Message::Masked(m) => m.from,
            Message::View(m) => m.from,
            Message::Unmask(m) => m.from,
        }
    }
}

/// What a secure round persists: nothing (the type has no values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {}

/// An effect of a secure round.
pub type SecureEffect = Effect<Persist>;

/// Why a message or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refused {
    /// The sender is not in the round's cohort.
    #[error("site '{site}' is not in round {round}'s cohort")]
    NotInCohort {
        /// The sender.
        site: String,
        /// The secure round.
        round: u32,
    },
    /// A message for a stage that is not open, or from a member the stage
    /// no longer waits for: the round went on without it.
    #[error("round {round}: stage {stage} closed before it answered")]
    Late {
        /// The secure round.
        round: u32,
        /// The message's stage number.
        stage: u32,
    },
    /// A second message from one member in one stage.
    #[error("round {round}: its {} already arrived", .stage.name())]
    Duplicate {
        /// The secure round.
        round: u32,
        /// The stage.
        stage: Stage,
    },
    /// The message names another sender than the member it came from.
    #[error("a message claiming to be from {claimed}, not {id}")]
    WrongSender {
        /// The member's id in the round.
        id: u32,
        /// The id the message gives.
        claimed: u32,
    },
    /// A poll for a stage that does not exist.
    #[error("no stage {0} to wait for")]
    NoStage(u32),
    /// The protocol refused it (malformed, wrong size, out of order).
    #[error(transparent)]
    Protocol(#[from] SecAggError),
}

impl Refused {
    /// The audit entry of this refusal of `site`'s message: `"late"` for a
    /// stage already closed, `"rejected"` otherwise.
    pub fn audit(&self, site: &str) -> SecureEffect {
        let event = match self {
            Refused::Late { .. } => "late",
            _ => "rejected",
        };
        Effect::audit(Some(site), event, self.to_string())
    }

    /// As a protocol error (for drivers that report those).
    pub fn into_secagg(self) -> SecAggError {
        match self {
            Refused::Protocol(e) => e,
            other => SecAggError::Config(other.to_string()),
        }
    }
}

/// Why a secure round could not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    /// The parameters cannot work (too small a cohort...).
    #[error(transparent)]
    Protocol(#[from] SecAggError),
    /// The members do not match the parameters' participants.
    #[error("the cohort's ids {members:?} are not the round's participants {participants:?}")]
    Members {
        /// The members' ids.
        members: Vec<u32>,
        /// The parameters' participants.
        participants: Vec<u32>,
    },
}

/// The parameters of training round `round` for members `ids` whose
/// updates have `n_values` values: with a random-k upload codec everyone
/// masks the round's shared coordinates only; the metadata (example count,
/// loss, steps) follows the update.
pub fn training_params(
    plan: &Plan,
    round: u32,
    ids: &[u32],
    n_values: usize,
) -> Result<RoundParams, SecAggError> {
    let length = plan
        .secure_coordinates(round, n_values)
        .map_or(n_values, |kept| kept.len());
    plan.secure_aggregation.round_params(
        round,
        ids,
        plan.secagg_graph_seed(round),
        masked_dimension(length),
    )
}

/// What a member asked for with a poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll<'a> {
    /// The round's parameters, and the member's id in it.
    Params(&'a RoundParams, u32),
    /// Its neighbours' keys (stage 2 is open).
    Keys(Vec<AdvertiseKeys>),
    /// The shares addressed to it (stage 3 is open).
    Shares(Vec<(u32, Vec<u8>)>),
    /// Who survived and who dropped (stage 4 is open).
    Unmask(UnmaskRequest),
    /// The survivors' signed views (stage 5 is open).
    Views(Vec<SignedView>),
    /// The round is over.
    Done,
    /// Not yet: ask again.
    Wait,
}

/// A round's secure aggregation in progress.
#[derive(Debug, Clone)]
pub struct SecureRound {
    round: u32,
    index: BTreeMap<String, u32>,
    names: BTreeMap<u32, String>,
    server: Server,
    stage: Stage,
    /// Who is still expected in the current stage, and who has answered.
    waiting: BTreeSet<u32>,
    sent: BTreeSet<u32>,
    stage_started: Timestamp,
    liveness: Duration,
    /// Members that refused the round: neither waited for nor asked again.
    refused: BTreeSet<String>,
}

impl SecureRound {
    /// Opens secure round `round` at `now` for `members` (name to id),
    /// whose ids must be the participants of `params`; each stage waits at
    /// most `liveness`. Its first effect wakes the driver at stage 1's
    /// deadline.
    pub fn open(
        now: Timestamp,
        round: u32,
        members: BTreeMap<String, u32>,
        params: RoundParams,
        liveness: Duration,
    ) -> Result<(Self, Vec<SecureEffect>), OpenError> {
        let mut ids: Vec<u32> = members.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut participants = params.participants.clone();
        participants.sort_unstable();
        if ids.len() != members.len() || ids != participants {
            return Err(OpenError::Members {
                members: members.values().copied().collect(),
                participants: params.participants.clone(),
            });
        }
        let server = Server::new(params)?;
        let round = Self {
            round,
            names: members.iter().map(|(s, i)| (*i, s.clone())).collect(),
            waiting: ids.into_iter().collect(),
            index: members,
            server,
            stage: Stage::Keys,
            sent: BTreeSet::new(),
            stage_started: now,
            liveness,
            refused: BTreeSet::new(),
        };
        let wake = vec![Effect::Wake(round.deadline())];
        Ok((round, wake))
    }

    /// The secure round's number.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The protocol's server, to read (keys, shares, views to relay).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// When the current stage closes if someone is still missing.
    pub fn deadline(&self) -> Timestamp {
        self.stage_started
            .plus(self.liveness)
            .plus(Duration::from_micros(1))
    }

    /// The members, by name, with their ids.
    pub fn members(&self) -> &BTreeMap<String, u32> {
        &self.index
    }

    /// `site`'s id in the round.
    pub fn id_of(&self, site: &str) -> Option<u32> {
        self.index.get(site).copied()
    }

    /// The name of the member with id `id`.
    pub fn name_of(&self, id: u32) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Whether `site` took part from the first stage (it sent its keys).
    pub fn has_joined(&self, site: &str) -> bool {
        self.id_of(site).is_some_and(|id| self.server.has_keys(id))
    }

    /// Whether `site` refused the round.
    pub fn has_refused(&self, site: &str) -> bool {
        self.refused.contains(site)
    }

    /// The names of the members whose masked input arrived.
    pub fn survivor_names(&self) -> Vec<&str> {
        self.names_of(&self.server.unmask_request().survivors)
    }

    /// The names of the members that shared keys and then dropped.
    pub fn dropped_names(&self) -> Vec<&str> {
        self.names_of(&self.server.unmask_request().dropped)
    }

    fn names_of(&self, ids: &[u32]) -> Vec<&str> {
        ids.iter().filter_map(|i| self.name_of(*i)).collect()
    }

    fn member(&self, site: &str) -> Result<u32, Refused> {
        self.id_of(site).ok_or_else(|| Refused::NotInCohort {
            site: site.to_string(),
            round: self.round,
        })
    }

    /// `site` asks for what stage `want` (1 to 6) needs.
    pub fn poll(&self, site: &str, want: u32) -> Result<Poll<'_>, Refused> {
        let id = self.member(site)?;
        let open = |stage: Stage| self.stage >= stage;
        Ok(match Stage::from_number(want) {
            Some(Stage::Keys) => Poll::Params(self.server.params(), id),
            Some(Stage::Shares) if open(Stage::Shares) => Poll::Keys(self.server.keys_for(id)),
            Some(Stage::Masked) if open(Stage::Masked) => Poll::Shares(self.server.shares_for(id)),
            Some(Stage::Views) if open(Stage::Views) => Poll::Unmask(self.server.unmask_request()),
            Some(Stage::Unmask) if open(Stage::Unmask) => Poll::Views(self.server.views()),
            Some(Stage::Done) if open(Stage::Done) => Poll::Done,
            Some(_) => Poll::Wait,
            None => return Err(Refused::NoStage(want)),
        })
    }

    /// `site`'s id when `stage` is open and still waits for it; refused as
    /// [`SecureRound::receive`] would otherwise (not in the cohort, or late).
    pub fn awaits(&self, site: &str, stage: Stage) -> Result<u32, Refused> {
        let id = self.member(site)?;
        if self.stage != stage || !self.waiting.contains(&id) {
            return Err(Refused::Late {
                round: self.round,
                stage: stage.number(),
            });
        }
        Ok(id)
    }

    /// `site`'s message for the current stage. Refused when `site` is not
    /// in the cohort, the message is for another stage or the stage no
    /// longer waits for `site` ([`Refused::Late`]), names another sender,
    /// repeats one already taken, or fails the protocol's checks. Taken,
    /// it may close the stage ([`SecureRound::advance`] at `now`).
    pub fn receive(
        &mut self,
        now: Timestamp,
        site: &str,
        message: Message,
    ) -> Result<Vec<SecureEffect>, Refused> {
        let stage = message.stage();
        let id = self.awaits(site, stage)?;
        if message.from() != id {
            return Err(Refused::WrongSender {
                id,
                claimed: message.from(),
            });
        }
        if self.sent.contains(&id) {
            return Err(Refused::Duplicate {
                round: self.round,
                stage,
            });
        }
        match message {
            Message::Keys(m) => self.server.receive_keys(m),
            Message::Shares(m) => self.server.receive_shares(m),
            Message::Masked(m) => self.server.receive_masked(m),
            Message::View(m) => self.server.receive_view(m),
            Message::Unmask(m) => self.server.receive_unmask(m),
        }?;
        self.sent.insert(id);
        Ok(self.advance(now))
    }

    /// `site` left the round: the current stage stops waiting for it (what
    /// it already sent in this stage stands). The stage does not close
    /// here: call [`SecureRound::advance`].
    pub fn withdraw(&mut self, site: &str) {
        if let Some(id) = self.id_of(site)
            && !self.sent.contains(&id)
        {
            self.waiting.remove(&id);
        }
    }

    /// `site` refuses the round (its checks failed): it is not waited for,
    /// nor asked again.
    pub fn refuse(&mut self, site: &str) -> bool {
        if self.id_of(site).is_none() {
            return false;
        }
        self.refused.insert(site.to_string());
        self.withdraw(site);
        true
    }

    /// Closes the current stage, and those after it, while everyone still
    /// in it has answered or its deadline has passed at `now`. A stage
    /// closed at its deadline audits who was missing; each new stage wakes
    /// the driver at its deadline.
    pub fn advance(&mut self, now: Timestamp) -> Vec<SecureEffect> {
        let mut effects = Vec::new();
        while self.stage < Stage::Done {
            let all_in = self.waiting.is_subset(&self.sent);
            let timed_out = now.since(self.stage_started) > self.liveness;
            if !all_in && !timed_out {
                break;
            }
            if !all_in {
                let missing: Vec<&str> = self.names_of(
                    &self
                        .waiting
                        .difference(&self.sent)
                        .copied()
                        .collect::<Vec<_>>(),
                );
                effects.push(Effect::audit(
                    None,
                    "dropped",
                    format!(
                        "round {}: stage {} ({}) closed at its deadline without {}",
                        self.round,
                        self.stage.number(),
                        self.stage.name(),
                        missing.join(", ")
                    ),
                ));
            }
            self.waiting = std::mem::take(&mut self.sent);
            self.stage = self.stage.next();
            self.stage_started = now;
            if self.stage < Stage::Done {
                effects.push(Effect::Wake(self.deadline()));
            }
        }
        effects
    }

    /// The survivors' summed quantised vector and how many they are, once
    /// the round is done. Fails when fewer than the threshold survived, or
    /// too few shares came back to remove the masks.
    pub fn finish(&self) -> Result<(Vec<u32>, usize), SecAggError> {
        if self.stage != Stage::Done {
            return Err(SecAggError::Config(format!(
                "round {} is still in stage {} ({})",
                self.round,
                self.stage.number(),
                self.stage.name()
            )));
        }
        self.server.finish()
    }

    /// The survivors' summed update (weight 1 each), decoded: the values
    /// scattered over `layout` (onto `kept`, with a random-k codec),
    /// examples and steps their sums, the loss their mean.
    pub fn recover(
        &self,
        layout: &ParameterSet,
        kept: Option<&[usize]>,
    ) -> Result<Update, SecAggError> {
        let (sum, count) = self.finish()?;
        update_of_sum(&sum, count, self.server.params(), layout, kept)
    }
}

/// The summed update of `count` contributors from the sum of their
/// quantised inputs modulo `2^32` (the update's values, or the `kept`
/// coordinates of it, then the metadata): what SecAgg+ unmasks and what
/// homomorphic aggregation decrypts.
pub fn update_of_sum(
    sum: &[u32],
    count: usize,
    params: &RoundParams,
    layout: &ParameterSet,
    kept: Option<&[usize]>,
) -> Result<Update, SecAggError> {
    let (summed, meta) = split_sum(sum, count, params)?;
    let summed: Vec<f32> = summed.into_iter().map(|v| v as f32).collect();
    let values = match kept {
        Some(ix) => tessera_compress::scatter(layout.n_values(), ix, &summed),
        None => summed,
    };
    let delta = layout
        .with_values(&values)
        .map_err(|e| SecAggError::Config(e.to_string()))?;
    Ok(Update {
        delta,
        n_examples: meta.n_examples,
        aux: None,
        stats: FitStats {
            n_steps: meta.n_steps,
            mean_train_loss: meta.mean_train_loss(),
            start_loss: None,
        },
    })
}
