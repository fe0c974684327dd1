//! The client supervisor: how a failed call is classified, and the one backoff loop that retries it.
//!
//! Every client in a federation (a participant toward its coordinator, an
//! aggregator toward its parent, a gossip peer toward its neighbours) runs
//! its work as attempts under [`supervise`]: an attempt that fails with
//! [`Failure::Retry`] is tried again after a pause that doubles up to
//! [`Retry::max_backoff`]; one that fails with [`Failure::Fatal`] stops at
//! once; and when failures go on for longer than [`Retry::give_up_after`]
//! the supervisor gives up with the last reason. An attempt that reaches the
//! other side says so ([`Progress::made`]), which restarts the give-up clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::ParticipantError;

/// A failure inside a session: retry (network) or stop (refusal).
#[derive(Debug)]
pub enum Failure<E = ParticipantError> {
    /// Try again after a pause (network, coordinator restarting).
    Retry(String),
    /// Stop (refused, unusable data or settings).
    Fatal(E),
}

/// The other side's refusal, with its message: what a gRPC status of
/// refusal becomes inside a [`Failure::Fatal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl From<Refused> for ParticipantError {
    fn from(refused: Refused) -> Self {
        ParticipantError::Refused(refused.0)
    }
}

/// The one classification of a failed call: invalid arguments, denied
/// permissions, failed preconditions and failed authentication are
/// refusals (stop); anything else (unavailable, deadline, reset...) passes
/// (retry).
impl<E: From<Refused>> From<Status> for Failure<E> {
    fn from(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Unauthenticated => Failure::Fatal(Refused(status.message().to_string()).into()),
            _ => Failure::Retry(format!("{}: {}", status.code(), status.message())),
        }
    }
}

/// How a supervised client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The pause after the first failure; each pause after it doubles.
    pub first_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
    /// Give up at the first failure that comes more than this long after
    /// the give-up clock started.
    pub give_up_after: Duration,
    /// When the give-up clock starts.
    pub clock: GiveUpClock,
}

/// When the give-up clock of a [`Retry`] starts. Either way, an attempt that
/// made progress stops it, and the next failure starts it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpClock {
    /// At the first failure (a long first attempt does not count).
    FirstFailure,
    /// When supervision starts (the first attempt counts).
    Start,
}

impl Retry {
    /// A client's reconnection to its coordinator or parent: first pause
    /// 100 ms, doubling up to `max_backoff`; giving up when it has been
    /// unreachable for `give_up_after` since the first failure after it was
    /// last reached.
    pub fn reconnect(max_backoff: Duration, give_up_after: Duration) -> Self {
        Self {
            first_backoff: Duration::from_millis(100),
            max_backoff,
            give_up_after,
            clock: GiveUpClock::FirstFailure,
        }
    }
}

/// What an attempt tells its supervisor: that it made progress (it reached
/// the other side), which restarts the give-up clock at its failure.
#[derive(Debug, Default)]
pub struct Progress(AtomicBool);

impl Progress {
    /// This attempt reached the other side.
    pub fn made(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether this attempt reached the other side (so far).
    pub fn reached(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether progress was made since the last call.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Why supervision stopped without a value.
#[derive(Debug, Error)]
pub enum Stopped<E> {
    /// An attempt failed for good.
    #[error(transparent)]
    Fatal(E),
    /// Attempts failed for longer than the policy's `give_up_after`.
    #[error("unreachable for {after:?}: {reason}")]
    GaveUp {
        /// The policy's `give_up_after`.
        after: Duration,
        /// The last attempt's reason.
        reason: String,
    },
}

/// Runs `attempt` on `state` until it succeeds (its value), fails for good
/// ([`Stopped::Fatal`]), or fails to retry for longer than `policy` allows
/// ([`Stopped::GaveUp`], with the last reason). Before each pause,
/// `retrying` gets the state, the reason and the pause (the caller's log
/// line, its counts). Progress restarts the give-up clock, not the backoff:
/// the pauses go on doubling toward the longest.
pub async fn supervise<S, T, E>(
    policy: &Retry,
    state: &mut S,
    mut attempt: impl AsyncFnMut(&mut S, &Progress) -> Result<T, Failure<E>>,
    mut retrying: impl FnMut(&mut S, &str, Duration),
) -> Result<T, Stopped<E>> {
    let progress = Progress::default();
    let mut backoff = policy.first_backoff;
    let mut since = match policy.clock {
        GiveUpClock::FirstFailure => None,
        GiveUpClock::Start => Some(Instant::now()),
    };
    loop {
        let reason = match attempt(state, &progress).await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(e)) => return Err(Stopped::Fatal(e)),
            Err(Failure::Retry(reason)) => reason,
        };
        if progress.take() {
            since = None;
        }
        let started = *since.get_or_insert_with(Instant::now);
        if started.elapsed() > policy.give_up_after {
            return Err(Stopped::GaveUp {
                after: policy.give_up_after,
                reason,
            });
        }
        retrying(state, &reason, backoff);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn all_ms(millis: &[u64]) -> Vec<Duration> {
        millis.iter().copied().map(ms).collect()
    }

    /// What a test's attempts saw: when each began (virtual time since the
    /// start), and each pause the supervisor announced.
    #[derive(Default)]
    struct Seen {
        attempts: Vec<Duration>,
        pauses: Vec<Duration>,
        reasons: Vec<String>,
    }

    fn policy(first: u64, max: u64, give_up: u64, clock: GiveUpClock) -> Retry {
        Retry {
            first_backoff: ms(first),
            max_backoff: ms(max),
            give_up_after: ms(give_up),
            clock,
        }
    }

    fn note(seen: &mut Seen, reason: &str, pause: Duration) {
        seen.reasons.push(reason.to_string());
        seen.pauses.push(pause);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_max() {
        let start = Instant::now();
        let mut seen = Seen::default();
        let value = supervise(
            &policy(100, 1000, 3_600_000, GiveUpClock::FirstFailure),
            &mut seen,
            async |seen: &mut Seen, _: &Progress| {
                seen.attempts.push(start.elapsed());
                if seen.attempts.len() <= 6 {
                    Err(Failure::<ParticipantError>::Retry("down".into()))
                } else {
                    Ok(seen.attempts.len())
                }
            },
            note,
        )
        .await
        .unwrap();
        assert_eq!(value, 7);
        assert_eq!(seen.pauses, all_ms(&[100, 200, 400, 800, 1000, 1000]));
        // Each attempt after the pause announced before it.
        assert_eq!(seen.attempts, all_ms(&[0, 100, 300, 700, 1500, 2500, 3500]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_failure_stops_at_once() {
        let start = Instant::now();
        let mut seen = Seen::default();
        let stopped = supervise(
            &policy(100, 1000, 3_600_000, GiveUpClock::FirstFailure),
            &mut seen,
            async |seen: &mut Seen, _: &Progress| -> Result<(), Failure> {
                seen.attempts.push(start.elapsed());
                Err(Failure::Fatal(ParticipantError::Local("no data".into())))
            },
            note,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&stopped, Stopped::Fatal(ParticipantError::Local(why)) if why == "no data"),
            "{stopped:?}"
        );
        assert_eq!(seen.attempts, [Duration::ZERO]);
        assert!(seen.pauses.is_empty());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_reports_the_last_reason() {
        let start = Instant::now();
        let mut seen = Seen::default();
        let stopped = supervise(
            &policy(100, 100, 1000, GiveUpClock::FirstFailure),
            &mut seen,
            async |seen: &mut Seen, _: &Progress| -> Result<(), Failure> {
                seen.attempts.push(start.elapsed());
                Err(Failure::Retry(format!("failure {}", seen.attempts.len())))
            },
            note,
        )
        .await
        .unwrap_err();
        // Failures at 0, 100, ..., 1000 ms are within the second; the one at
        // 1100 ms is past it, and its reason is the one reported.
        match stopped {
            Stopped::GaveUp { after, reason } => {
                assert_eq!(after, ms(1000));
                assert_eq!(reason, "failure 12");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.attempts.len(), 12);
        assert_eq!(seen.pauses.len(), 11);
        assert_eq!(seen.reasons.last().map(String::as_str), Some("failure 11"));
        assert_eq!(start.elapsed(), ms(1100));
    }

    /// Attempts that each take 600 ms, then fail: counted from the first
    /// failure, the clock gives up a failure later than counted from the start.
    #[tokio::test(start_paused = true)]
    async fn the_clock_starts_at_the_first_failure_or_at_the_start() {
        for (clock, attempts) in [(GiveUpClock::FirstFailure, 3), (GiveUpClock::Start, 2)] {
            let mut seen = Seen::default();
            let stopped = supervise(
                &policy(100, 100, 1000, clock),
                &mut seen,
                async |seen: &mut Seen, _: &Progress| -> Result<(), Failure> {
                    tokio::time::sleep(ms(600)).await;
                    seen.attempts.push(Duration::ZERO);
                    Err(Failure::Retry("slow".into()))
                },
                note,
            )
            .await
            .unwrap_err();
            assert!(matches!(stopped, Stopped::GaveUp { .. }), "{stopped:?}");
            assert_eq!(seen.attempts.len(), attempts, "{clock:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_give_up_clock() {
        // Attempts fail at once, but the 5th reaches the other side and
        // stays 5 s before it fails: without its progress the supervisor
        // would give up after it (1 s), with it the clock starts again at
        // its failure.
        for progress in [false, true] {
            let start = Instant::now();
            let mut seen = Seen::default();
            let stopped = supervise(
                &policy(100, 400, 1000, GiveUpClock::FirstFailure),
                &mut seen,
                async |seen: &mut Seen, made: &Progress| -> Result<(), Failure> {
                    seen.attempts.push(start.elapsed());
                    if seen.attempts.len() == 5 {
                        if progress {
                            made.made();
                        }
                        tokio::time::sleep(ms(5000)).await;
                    }
                    Err(Failure::Retry(format!("failure {}", seen.attempts.len())))
                },
                note,
            )
            .await
            .unwrap_err();
            let Stopped::GaveUp { reason, .. } = stopped else {
                panic!("{stopped:?}");
            };
            if !progress {
                // Failures at 0, 100, 300 and 700 ms are within the second;
                // the 5th attempt, begun at 1100 ms, fails at 6100 ms: past it.
                assert_eq!(reason, "failure 5");
                assert_eq!(start.elapsed(), ms(6100));
                continue;
            }
            // The clock restarts at 6100 ms; the pauses go on at the
            // longest (progress does not reset the backoff): failures at
            // 6500 and 6900 ms are within the second, 7300 ms is past it.
            assert_eq!(reason, "failure 8");
            assert_eq!(start.elapsed(), ms(7300));
            assert_eq!(seen.pauses, all_ms(&[100, 200, 400, 400, 400, 400, 400]));
        }
    }

    #[test]
    fn statuses_classify_as_refusals_or_retries() {
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::Unauthenticated,
        ] {
            let failure: Failure = Status::new(code, "no").into();
            assert!(
                matches!(&failure, Failure::Fatal(ParticipantError::Refused(m)) if m == "no"),
                "{code:?}: {failure:?}"
            );
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
            Code::ResourceExhausted,
        ] {
            let failure: Failure = Status::new(code, "later").into();
            let expected = format!("{code}: later");
            assert!(
                matches!(&failure, Failure::Retry(r) if *r == expected),
                "{code:?}: {failure:?}"
            );
        }
    }
}
