//! The federation's owner: one thread of its own runs every piece of work
//! on the [`Federation`] (an actor); async callers send work and await the
//! answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tonic::Status;

use crate::state::Federation;

/// A piece of work on the federation, run by its owner thread.
type Job = Box<dyn FnOnce(&mut Federation) + Send>;

/// State shared by every call. The [`Federation`] is owned by one thread of
/// its own (an actor): calls send it work and await the answer, so the
/// database's commits, aggregation and secure-aggregation unmasking never
/// run on the async runtime's workers, and calls are served in the order
/// they arrive.
pub struct Shared {
    jobs: std::sync::mpsc::Sender<Job>,
    changed: watch::Sender<u64>,
    /// Sites told that the run is over, or that left it (`Withdraw` with
    /// `leaving`): the coordinator stops once every joined site is here.
    pub told_finished: Mutex<BTreeSet<String>>,
    /// Each site's secure-aggregation polls held now (`service/secure.rs`).
    pub held_polls: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    /// Shares `federation`, moving it to its owner thread.
    pub fn new(federation: Federation) -> Arc<Self> {
        let version = federation.version();
        let (changed, _) = watch::channel(version);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let wake = changed.clone();
        std::thread::Builder::new()
            .name("federation".into())
            .spawn(move || serve_jobs(federation, &queue, &wake))
            .unwrap_or_else(|e| panic!("cannot start the federation's thread: {e}"));
        Arc::new(Self {
            jobs,
            changed,
            told_finished: Mutex::new(BTreeSet::new()),
            held_polls: Mutex::new(BTreeMap::new()),
        })
    }

    /// Opens the federation with `open` on a thread of its own, which then
    /// owns it: opening reads the database and replays the run's rounds,
    /// blocking work kept off the async runtime. Returns `open`'s error.
    pub async fn open<E: Send + 'static>(
        open: impl FnOnce() -> Result<Federation, E> + Send + 'static,
    ) -> Result<Arc<Self>, E> {
        let (changed, _) = watch::channel(0);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (opened, answer) = tokio::sync::oneshot::channel();
        let wake = changed.clone();
        std::thread::Builder::new()
            .name("federation".into())
            .spawn(move || match open() {
                Ok(federation) => {
                    wake.send_replace(federation.version());
                    let _ = opened.send(Ok(()));
                    serve_jobs(federation, &queue, &wake);
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the federation's thread: {e}"));
        match answer.await {
            Ok(Ok(())) => Ok(Arc::new(Self {
                jobs,
                changed,
                told_finished: Mutex::new(BTreeSet::new()),
                held_polls: Mutex::new(BTreeMap::new()),
            })),
            Ok(Err(e)) => Err(e),
            Err(_) => panic!("the federation's thread failed while opening it"),
        }
    }

    /// Runs `f` on the federation's thread and waits for it there (for
    /// callers outside the async runtime: tests, start-up, shut-down).
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Federation) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(Box::new(move |federation| {
            let _ = tx.send(f(federation));
        }));
        rx.recv()
            .unwrap_or_else(|_| panic!("the federation's thread failed a call"))
    }

    /// Queues `f` for the federation's thread at once (calls run in the
    /// order they are made) and returns its answer to await; waiters wake if
    /// it changed anything.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Federation) -> R + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R, Status>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |federation| {
            let _ = tx.send(f(federation));
        }));
        async move {
            rx.await
                .map_err(|_| Status::internal("the coordinator failed this call; see its log"))
        }
    }

    /// Sends `f` to the federation's thread without waiting (for callbacks
    /// that cannot wait, such as a refused TLS handshake's audit).
    pub fn post(&self, f: impl FnOnce(&mut Federation) + Send + 'static) {
        self.submit(Box::new(f));
    }

    fn submit(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            tracing::error!("the federation's thread has stopped");
        }
    }

    /// Wakes on every change of the federation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A long poll: runs `f` on the federation's thread after each change
    /// that `changes` (subscribed before the first asking) sees, until
    /// `ready` holds of its answer or `hold` has passed. The last answer,
    /// or `None` when nothing changed in time.
    pub async fn call_on_change<R: Send + 'static>(
        &self,
        mut changes: watch::Receiver<u64>,
        hold: std::time::Duration,
        f: impl Fn(&mut Federation) -> R + Send + Sync + 'static,
        ready: impl Fn(&R) -> bool,
    ) -> Result<Option<R>, Status> {
        let f = Arc::new(f);
        let until = tokio::time::Instant::now() + hold;
        let mut last = None;
        while let Ok(Ok(())) = tokio::time::timeout_at(until, changes.changed()).await {
            let g = Arc::clone(&f);
            let answer = self.call(move |federation| g(federation)).await?;
            if ready(&answer) {
                return Ok(Some(answer));
            }
            last = Some(answer);
        }
        Ok(last)
    }
}

/// The federation's owner: runs each job in turn and publishes the version
/// after one that changed it. A job that panics is logged and its caller
/// answered with an error; the next job runs (as a poisoned lock was
/// recovered before).
fn serve_jobs(
    mut federation: Federation,
    queue: &std::sync::mpsc::Receiver<Job>,
    changed: &watch::Sender<u64>,
) {
    while let Ok(job) = queue.recv() {
        let before = federation.version();
        let run = std::panic::AssertUnwindSafe(|| job(&mut federation));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("a call panicked on the federation's thread");
        }
        let after = federation.version();
        if after != before {
            changed.send_replace(after);
        }
    }
}
