//! Real processes on 127.0.0.1: coordinators and participants, with their
//! output drained in the background, and a way to kill them hard.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `tessera` process.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    pub name: String,
    /// The threads draining stdout and stderr: joined once the process has
    /// ended, so that its log is whole when `wait` returns.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `tessera args` in `dir`; `listening` receives the coordinator's address.
    pub fn start(
        name: &str,
        dir: &Path,
        args: &[&str],
        listening: Option<mpsc::Sender<String>>,
    ) -> Proc {
        Self::start_env(name, dir, args, listening, &[])
    }

    /// [`Proc::start`] with `env` set in the process's environment.
    pub fn start_env(
        name: &str,
        dir: &Path,
        args: &[&str],
        listening: Option<mpsc::Sender<String>>,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .current_dir(dir)
            .env("TESSERA_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera");
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            let listening = listening.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let (Some(tx), Some(address)) =
                        (&listening, line.strip_prefix("listening on "))
                    {
                        let _ = tx.send(address.trim().to_string());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }));
        }
        Proc {
            child,
            log,
            name: name.to_string(),
            readers,
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The pipes close with the process: the log is complete once
                // the readers have seen their end.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            if start.elapsed() > limit {
                self.kill_9();
                panic!("{} did not finish in {limit:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator on 127.0.0.1 (`port` 0: any free port); returns it and its URL.
pub fn coordinator(
    dir: &Path,
    plan: &Path,
    db: &Path,
    port: u16,
    extra: &[&str],
) -> (Proc, String) {
    coordinator_env(dir, plan, db, port, extra, &[])
}

/// [`coordinator`] with `env` set in its environment (drills).
pub fn coordinator_env(
    dir: &Path,
    plan: &Path,
    db: &Path,
    port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, String) {
    let (tx, rx) = mpsc::channel();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "coordinator",
        "--plan",
        plan.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    if !extra.contains(&"--tls") {
        args.push("--insecure");
    }
    args.extend_from_slice(extra);
    let proc = Proc::start_env("coordinator", dir, &args, Some(tx), env);
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the coordinator did not start:\n{}", proc.log()));
    (proc, format!("http://{address}"))
}

/// The repository's examples folder and heart-disease data.
pub fn examples() -> PathBuf {
    super::root().join("examples")
}

pub fn heart_file(site: &str) -> PathBuf {
    super::root().join(format!("data/uci-heart-disease/processed.{site}.data"))
}

pub const HEART_SITES: [&str; 4] = ["cleveland", "hungarian", "switzerland", "va"];

/// A heart-disease participant.
pub fn participant(dir: &Path, url: &str, site: &str, extra: &[&str]) -> Proc {
    participant_with(dir, url, site, &heart_file(site), extra)
}

/// A participant for `site` reading `data`.
pub fn participant_with(dir: &Path, url: &str, site: &str, data: &Path, extra: &[&str]) -> Proc {
    participant_env(dir, url, site, data, extra, &[])
}

/// [`participant_with`] with `env` set in its environment.
pub fn participant_env(
    dir: &Path,
    url: &str,
    site: &str,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    // The repository: the tests' plans name the bundled data by absolute
    // paths, which a participant reads only under its --plan-dir.
    let plan_dir = super::root();
    let mut args = vec![
        "participant",
        "--coordinator",
        url,
        "--site",
        site,
        "--data",
        data.to_str().unwrap(),
        "--plan-dir",
        plan_dir.to_str().unwrap(),
    ];
    if !extra.contains(&"--give-up-after") {
        args.extend_from_slice(&["--give-up-after", "60"]);
    }
    if !extra.contains(&"--tls") {
        args.push("--insecure");
    }
    args.extend_from_slice(extra);
    Proc::start_env(site, dir, &args, None, env)
}

/// Aggregator `name` below `upstream`, listening on 127.0.0.1:`port` (0:
/// any free port); returns it and its URL.
pub fn aggregator(
    dir: &Path,
    upstream: &str,
    name: &str,
    db: &Path,
    port: u16,
    extra: &[&str],
) -> (Proc, String) {
    let (tx, rx) = mpsc::channel();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "aggregator",
        "--upstream",
        upstream,
        "--name",
        name,
        "--db",
        db.to_str().unwrap(),
        "--listen",
        &listen,
        "--give-up-after",
        "60",
    ];
    if !extra.contains(&"--tls") {
        args.push("--insecure");
    }
    args.extend_from_slice(extra);
    let proc = Proc::start(name, dir, &args, Some(tx));
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("aggregator {name} did not start:\n{}", proc.log()));
    (proc, format!("http://{address}"))
}

/// A port free now on 127.0.0.1, for a process that must be told its port
/// before it starts (gossip peers name each other's; a process that keeps
/// its port across a restart).
///
/// Taken below the kernel's ephemeral range (Linux: 32768 and up), where
/// no port is handed out by itself: a port the kernel gave `bind(0)` here
/// could be given again, as the source port of any connection the tests
/// running beside this one open, before the process told it binds it (CI
/// saw "Address already in use"). Ports are tried in a sequence that starts
/// at a place set by this process's id, so that test binaries and threads
/// rarely try the same one; the kernel's choice is the fallback.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 15_000;
    const SPAN: u32 = 17_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..200 {
        let offset = (start + NEXT.fetch_add(7, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(LOW + offset).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// Polls `check` every 20 ms until it holds, at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 20 ms until it holds, at most `limit`, while every
/// one of `procs` runs: one that ends first, or the time running out,
/// fails at once with each process's state and log (so a wait names why
/// it failed rather than only that it timed out).
pub fn wait_while_running(
    limit: Duration,
    what: &str,
    procs: &mut [Proc],
    mut check: impl FnMut(&[Proc]) -> bool,
) {
    let start = Instant::now();
    while !check(procs) {
        let ended: Vec<String> = procs
            .iter_mut()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} ended ({status})", p.name)),
                _ => None,
            })
            .collect();
        let late = start.elapsed() >= limit;
        if late || !ended.is_empty() {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}:\n{}", p.name, p.log()))
                .collect();
            panic!(
                "{} waiting for {what}: {ended:?}\n{}",
                if late { "timed out" } else { "a process ended" },
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a read-only query against the coordinator's database (it may be
/// busy): only for what concerns the file itself (a table that must not be
/// there); what a run recorded is read through `util::status`.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return -1;
    };
    let _ = conn.busy_timeout(Duration::from_secs(2));
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}
