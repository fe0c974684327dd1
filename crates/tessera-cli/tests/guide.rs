//! docs/OPERATIONS.md, checked command by command: its marked blocks run in
//! bash, in order, on one machine where each host is a folder under
//! `hosts/` and `/srv/tessera` and `/etc/systemd/system` are that host's
//! own. Stand-ins replace what needs root or other machines: `scp` copies
//! between the folders, `systemctl` runs a unit's `ExecStart` in its
//! `WorkingDirectory` (SIGTERM to stop it, its exit status kept),
//! `journalctl` prints what it wrote, `sudo` runs its command, `useradd`
//! does nothing and `install` drops its owner. The hospitals' blocks run for
//! three hospitals first, so that the run waits for the fourth while the
//! guide's watching, upgrading and rotating blocks run; then for the
//! fourth, and the run must finish with every hospital's results. The unit
//! files are checked with `systemd-analyze verify`. Gated by `TESSERA_E2E=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::procs::{HEART_SITES, free_port};
use util::{Scratch, doc_blocks, fresh_copy, root, skip_e2e};

const GUIDE: &str = "docs/OPERATIONS.md";
const COORDINATOR_HOST: &str = "coord.hospital-net.org";

/// `scp [-r] SOURCE... [HOST:]TARGET`: `HOST:/PATH` is `$HOSTS/HOST/PATH`.
const SCP: &str = r#"#!/bin/bash
set -eu
args=()
for a in "$@"; do
  case "$a" in
    -*) ;;
    *:/*) args+=("$HOSTS/${a%%:*}${a#*:}") ;;
    *) args+=("$a") ;;
  esac
done
target="${args[${#args[@]}-1]}"
case "$target" in */) mkdir -p "$target" ;; *) mkdir -p "$(dirname "$target")" ;; esac
cp -r "${args[@]}"
"#;

/// Runs one unit's command: `unit-run PREFIX FOLDER COMMAND...`, keeping its
/// output in PREFIX.log, its process id in PREFIX.pid, its exit status in
/// PREFIX.status.
const UNIT_RUN: &str = r#"#!/bin/bash
prefix=$1; folder=$2; shift 2
cd "$folder" || exit 1
"$@" >> "$prefix.log" 2>&1 &
echo $! > "$prefix.pid"
wait $!
echo $? > "$prefix.status"
"#;

/// `systemctl [daemon-reload | enable --now | start | stop | restart |
/// status] UNIT` on host `$HOST`, from `$HOSTS/$HOST/etc/systemd/system`.
const SYSTEMCTL: &str = r#"#!/bin/bash
set -u
state="$HOSTS/$HOST/run"
mkdir -p "$state"
name() { case "$1" in *.service) echo "$1" ;; *) echo "$1.service" ;; esac; }
file() {
  local f="$HOSTS/$HOST/etc/systemd/system/$1"
  [ -f "$f" ] || f="$HOSTS/$HOST/etc/systemd/system/${1%%@*}@.service"
  echo "$f"
}
running() { local pid; pid=$(cat "$state/$1.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }
start() {
  local u f instance folder command
  u=$(name "$1"); f=$(file "$u")
  [ -f "$f" ] || { echo "Unit $u not found." >&2; exit 5; }
  running "$u" && return 0
  instance=""
  case "$u" in *@*.service) instance=${u#*@}; instance=${instance%.service} ;; esac
  folder="$HOSTS/$HOST$(sed -n 's/^WorkingDirectory=//p' "$f")"
  command=$(sed -n 's/^ExecStart=//p' "$f" | sed "s#/usr/local/bin/tessera#tessera#; s#%i#$instance#g")
  rm -f "$state/$u.pid" "$state/$u.status"
  # shellcheck disable=SC2086
  setsid unit-run "$state/$u" "$folder" $command < /dev/null > /dev/null 2>&1 &
  for _ in $(seq 100); do [ -s "$state/$u.pid" ] && return 0; sleep 0.1; done
  echo "$u did not start" >&2; exit 1
}
stop() {
  local u pid
  u=$(name "$1")
  pid=$(cat "$state/$u.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do [ -s "$state/$u.status" ] && break; sleep 0.1; done
  echo "$u: exited with status $(cat "$state/$u.status" 2>/dev/null || echo '?')"
}
case "$1" in
  daemon-reload) ;;
  enable) shift; [ "$1" = "--now" ] && start "$2" ;;
  start) start "$2" ;;
  stop) stop "$2" ;;
  restart) stop "$2"; start "$2" ;;
  status)
    u=$(name "$2")
    if running "$u"; then echo "$u: active (running)"; else
      echo "$u: inactive (exit status $(cat "$state/$u.status" 2>/dev/null || echo none))"; exit 3; fi ;;
  *) echo "systemctl stand-in: $* is not known" >&2; exit 1 ;;
esac
"#;

/// `journalctl -u UNIT [...]`: what the unit wrote.
const JOURNALCTL: &str = r#"#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in -u) u=$2; shift 2 ;; *) shift ;; esac; done
case "$u" in *.service) ;; *) u="$u.service" ;; esac
cat "$HOSTS/$HOST/run/$u.log" 2>/dev/null
"#;

const SUDO: &str = "#!/bin/bash\nexec \"$@\"\n";
const USERADD: &str = "#!/bin/bash\nexit 0\n";
/// `install` without `-o`/`-g` (no root here).
const INSTALL: &str = r#"#!/bin/bash
args=()
while [ $# -gt 0 ]; do case "$1" in -o|-g) shift 2 ;; *) args+=("$1"); shift ;; esac; done
exec /usr/bin/install "${args[@]}"
"#;

/// The rehearsal's machine: the operator's folder (a copy of the
/// repository's examples, data and deploy folders), the hosts, the
/// stand-ins, and the ports the guide's are replaced with.
struct Rehearsal {
    s: Scratch,
    hosts: PathBuf,
    bin: PathBuf,
    port: u16,
    metrics: u16,
    dashboard: u16,
}

impl Rehearsal {
    fn new() -> Self {
        let s = fresh_copy("guide");
        copy_dir(&root().join("deploy"), &s.path("deploy"));
        let hosts = s.path("hosts");
        let bin = s.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, text) in [
            ("scp", SCP),
            ("unit-run", UNIT_RUN),
            ("systemctl", SYSTEMCTL),
            ("journalctl", JOURNALCTL),
            ("sudo", SUDO),
            ("useradd", USERADD),
            ("install", INSTALL),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, text).unwrap();
            make_executable(&path);
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tessera"), bin.join("tessera")).unwrap();
        let r = Rehearsal {
            hosts,
            bin,
            port: free_port(),
            metrics: free_port(),
            dashboard: free_port(),
            s,
        };
        // The units the operator sends, with this machine's ports.
        for unit in [
            "tessera-coordinator.service",
            "tessera-participant@.service",
        ] {
            let path = r.s.path(&format!("deploy/systemd/{unit}"));
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, r.local(&text)).unwrap();
        }
        r
    }

    /// `text` with this machine's ports and the coordinator's host name
    /// (the certificate is issued for it, and it resolves here).
    fn local(&self, text: &str) -> String {
        text.replace(COORDINATOR_HOST, "localhost")
            .replace(":7000", &format!(":{}", self.port))
            .replace("127.0.0.1:9100", &format!("127.0.0.1:{}", self.metrics))
            .replace("127.0.0.1:7080", &format!("127.0.0.1:{}", self.dashboard))
    }

    /// Host `host`'s folder.
    fn host(&self, host: &str) -> PathBuf {
        let host = if host == COORDINATOR_HOST {
            "localhost"
        } else {
            host
        };
        self.hosts.join(host)
    }

    /// Runs block `lines` on `host` (`operator`: in the operator's folder;
    /// else that host's, with its `/srv/tessera` and
    /// `/etc/systemd/system`); its output.
    fn run(&self, host: &str, lines: &[String]) -> String {
        match self.attempt(host, lines) {
            Ok(out) => out,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Runs block `lines` on `host` as [`Rehearsal::run`] does; its output,
    /// or what failed.
    fn attempt(&self, host: &str, lines: &[String]) -> Result<String, String> {
        let mut script = self.local(&lines.join("\n"));
        let (folder, name) = if host == "operator" {
            (self.s.dir.clone(), "operator".to_string())
        } else {
            let folder = self.host(host);
            for path in ["/srv/tessera", "/etc/systemd/system"] {
                std::fs::create_dir_all(folder.join(&path[1..])).unwrap();
                script = script.replace(path, &format!("{}{path}", folder.display()));
            }
            let name = folder.file_name().unwrap().to_string_lossy().to_string();
            (folder, name)
        };
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&folder)
            .env("PATH", path)
            .env("HOSTS", &self.hosts)
            .env("HOST", &name)
            .env("NO_COLOR", "1")
            .output()
            .expect("run bash");
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(out)
        } else {
            Err(format!("{GUIDE}, on {host}:\n{script}\n---\n{out}"))
        }
    }

    /// A unit's exit status on `host`, once it has one (within `limit`).
    fn exit_status(&self, host: &str, unit: &str, limit: Duration) -> String {
        let path = self.host(host).join(format!("run/{unit}.service.status"));
        let start = Instant::now();
        loop {
            if let Ok(status) = std::fs::read_to_string(&path) {
                return status.trim().to_string();
            }
            if start.elapsed() > limit {
                let log = std::fs::read_to_string(
                    self.host(host).join(format!("run/{unit}.service.log")),
                )
                .unwrap_or_default();
                panic!("{unit} on {host} still runs after {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Rehearsal {
    /// Whatever still runs is killed.
    fn drop(&mut self) {
        let Ok(hosts) = std::fs::read_dir(&self.hosts) else {
            return;
        };
        for host in hosts.flatten() {
            let Ok(files) = std::fs::read_dir(host.path().join("run")) else {
                continue;
            };
            for file in files.flatten() {
                if file.path().extension().is_some_and(|e| e == "pid")
                    && let Ok(pid) = std::fs::read_to_string(file.path())
                {
                    let _ = Command::new("kill")
                        .args(["-9", pid.trim()])
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The guide's checked blocks: (host, for each hospital, lines).
fn checked_blocks() -> Vec<(String, bool, Vec<String>)> {
    doc_blocks(GUIDE)
        .into_iter()
        .filter_map(|(marker, lines)| {
            let rest = marker.strip_prefix("checked: on ")?;
            let (host, each) = match rest.strip_suffix(", for each hospital") {
                Some(host) => (host, true),
                None => (rest, false),
            };
            Some((host.to_string(), each, lines))
        })
        .collect()
}

#[test]
fn the_guide_has_its_checked_blocks() {
    let blocks = checked_blocks();
    let hosts: BTreeSet<&str> = blocks.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(
        hosts,
        BTreeSet::from(["operator", COORDINATOR_HOST, "cleveland.hospital-net.org"]),
    );
    assert!(blocks.len() >= 8, "{blocks:?}");
    assert!(blocks.iter().filter(|(_, each, _)| *each).count() >= 2);
}

/// The whole guide, as an operator types it, on one machine.
#[test]
fn the_operators_guide_runs_command_by_command() {
    if skip_e2e("the_operators_guide_runs_command_by_command") {
        return;
    }
    let r = Rehearsal::new();
    let (first, last) = HEART_SITES.split_at(3);
    let mut deferred = Vec::new();
    let mut watched = false;
    for (host, each, lines) in checked_blocks() {
        let typed = |site: &str| -> (String, Vec<String>) {
            let lines = lines.iter().map(|l| l.replace("cleveland", site)).collect();
            (host.replace("cleveland", site), lines)
        };
        if each {
            for site in first {
                if host != "operator" {
                    // The hospital's own extract, from its own systems.
                    let data = r.host(&host.replace("cleveland", site));
                    std::fs::create_dir_all(data.join("srv/tessera/data")).unwrap();
                    std::fs::copy(
                        r.s.path(&format!("data/uci-heart-disease/processed.{site}.data")),
                        data.join(format!("srv/tessera/data/{site}.csv")),
                    )
                    .unwrap();
                }
                let (host, lines) = typed(site);
                r.run(&host, &lines);
            }
            deferred.push(typed(last[0]));
            continue;
        }
        if lines.iter().any(|l| l.starts_with("tessera status")) {
            // Three hospitals are in; the run waits for the fourth, and says
            // so. On a loaded machine the coordinator may not have opened the
            // run, or the sites joined it, yet: the operator looks again.
            let start = Instant::now();
            let out = loop {
                let attempt = r.attempt(&host, &lines);
                match attempt {
                    Ok(out) if out.contains("va") && out.contains("tessera_waiting_sites") => {
                        break out;
                    }
                    _ if start.elapsed() < Duration::from_secs(60) => {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Ok(out) => panic!("the run does not say it waits for va:\n{out}"),
                    Err(failure) => panic!("{failure}"),
                }
            };
            assert!(out.contains("va"), "{out}");
            watched = true;
            continue;
        }
        r.run(&host, &lines);
    }
    assert!(watched, "the guide watches the run");
    // The fourth hospital comes: the run goes on and finishes.
    let va = r.host("va.hospital-net.org");
    std::fs::create_dir_all(va.join("srv/tessera/data")).unwrap();
    std::fs::copy(
        r.s.path("data/uci-heart-disease/processed.va.data"),
        va.join("srv/tessera/data/va.csv"),
    )
    .unwrap();
    for (host, lines) in deferred {
        r.run(&host, &lines);
    }
    let limit = Duration::from_secs(300);
    assert_eq!(
        r.exit_status(COORDINATOR_HOST, "tessera-coordinator", limit),
        "0"
    );
    for site in HEART_SITES {
        let host = format!("{site}.hospital-net.org");
        let unit = format!("tessera-participant@{site}");
        assert_eq!(r.exit_status(&host, &unit, limit), "0", "{site}");
        // Each hospital has its results.
        let out = r.host(&host).join("srv/tessera/out");
        assert!(out.join("model.tsm").is_file(), "{site}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert!(report.is_object(), "{site}: {report}");
    }
    // Cleveland started three times: at first, after the upgrade, and with
    // its new certificate; the old one is revoked.
    let log = std::fs::read_to_string(
        r.host("cleveland.hospital-net.org")
            .join("run/tessera-participant@cleveland.service.log"),
    )
    .unwrap();
    // A start stopped before it joined logs no "data read" (the guide's steps
    // may follow each other faster than a join): count the stops and the
    // finish instead.
    assert!(log.matches("stopped by SIGTERM").count() >= 2, "{log}");
    assert!(log.contains("run finished"), "{log}");
    let list = r.s.run(&["ca", "list", "--dir", "ca"]).ok();
    assert!(list.contains("revoked"), "{list}");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.host(COORDINATOR_HOST).join("srv/tessera/out/report.json")).unwrap(),
    )
    .unwrap();
    // All four hospitals trained in every round (the plan keeps the sites'
    // evaluations to their sums, so the report names them by their traffic).
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 15, "{report}");
    assert!(rounds.iter().all(|r| r["accepted"] == 4), "{report}");
    let sites: Vec<&String> = report["communication"]["bytes_up_per_site"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(sites, HEART_SITES, "{report}");
}

/// The units are valid systemd units (`systemd-analyze verify`), restart only
/// on the exit codes README calls transient, and run the binary the
/// container recipe installs.
#[test]
fn the_units_and_the_container_recipe_fit_the_guide() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let codes: BTreeSet<u32> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("  | "))
        .filter_map(|l| l.split('|').next())
        .flat_map(|codes| codes.split(',').map(|c| c.trim().parse::<u32>().ok()))
        .flatten()
        .collect();
    assert!(codes.contains(&17) && codes.contains(&70), "{codes:?}");
    let prevented = |unit: &str| -> BTreeSet<u32> {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
            .unwrap()
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect()
    };
    // A participant is restarted when the coordinator stayed unreachable,
    // never for what an operator must fix.
    let participant = prevented("tessera-participant@.service");
    assert_eq!(
        participant,
        BTreeSet::from([1, 2, 3, 11, 12, 13, 14, 15, 16, 17, 18])
    );
    assert!(participant.is_subset(&codes));
    // A coordinator is restarted after a database failure (70), not after
    // an abort or bad settings.
    assert_eq!(
        prevented("tessera-coordinator.service"),
        BTreeSet::from([1, 2, 3])
    );
    let containerfile = std::fs::read_to_string(root().join("deploy/Containerfile")).unwrap();
    let guide = std::fs::read_to_string(root().join(GUIDE)).unwrap();
    assert!(containerfile.contains("RUN cargo build --release --locked -p tessera-cli"));
    assert!(guide.contains("cargo build --release --locked -p tessera-cli"));
    assert!(containerfile.contains("/usr/local/bin/tessera"));
    assert!(containerfile.contains("EXPOSE 7000 7100"));

    let Ok(verify) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("TESSERA_E2E").is_none(),
            "systemd-analyze is missing (.ci/run installs Debian's systemd package)"
        );
        eprintln!("systemd-analyze is not installed: the units' syntax was not checked");
        return;
    };
    assert!(verify.status.success());
    let s = Scratch::new("units");
    for unit in [
        "tessera-coordinator.service",
        "tessera-participant@.service",
    ] {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/tessera", env!("CARGO_BIN_EXE_tessera"));
        std::fs::write(s.path(unit), text).unwrap();
    }
    let output = Command::new("systemd-analyze")
        .args([
            "verify",
            "./tessera-coordinator.service",
            "./tessera-participant@cleveland.service",
        ])
        .current_dir(&s.dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    // Warnings about the unit files themselves (unknown keys and the like).
    assert!(!said.contains("tessera-"), "{said}");
}
