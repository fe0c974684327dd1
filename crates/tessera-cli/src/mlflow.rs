//! The MLflow bridge: a run's record ([`Tracked`]) logged to an MLflow
//! tracking server over its REST API (`/api/2.0/mlflow/...`): the
//! experiment named after the plan (made if missing), one MLflow run per
//! Tessera run (a run already logged, found by its `tessera.run_id` tag, is
//! not logged twice), the plan's settings as params, each round's metrics
//! at its step, the data fingerprints and versions as tags, and the files
//! as artifacts through the server's artifact proxy
//! (`/api/2.0/mlflow-artifacts`, MLflow's default since 2.0).
//!
//! Plain `http://` only (a tracking server behind TLS is reached through a
//! local proxy); a small HTTP/1.1 client over a `TcpStream`, one request a
//! connection, replies bounded in size and time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::tracking::{Tracked, flatten};

/// The most a reply may hold.
const MAX_REPLY: u64 = 32 << 20;
/// MLflow's limits per `log-batch` request.
const PARAMS_PER_BATCH: usize = 100;
const METRICS_PER_BATCH: usize = 1000;
const TAGS_PER_BATCH: usize = 100;
/// MLflow's longest param value (6000 characters since 1.x's 500 grew).
const MAX_PARAM_VALUE: usize = 6000;

/// A tracking server at `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone)]
pub struct Server {
    host: String,
    port: u16,
    base: String,
    url: String,
}

/// Percent-encodes a query value.
fn encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// MLflow's key characters: letters (any script), digits, `_ - . / ` and
/// space; any other becomes `_`.
fn key(k: &str) -> String {
    k.chars()
        .map(|c| {
            if c.is_alphanumeric() || "_-./ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(250)
        .collect()
}

impl Server {
    /// Parses `url`; only `http://` is spoken.
    pub fn new(url: &str) -> anyhow::Result<Server> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!(
                "--mlflow {}: give the tracking server as http://HOST:PORT (https is not \
                 spoken here: reach it through a local proxy)",
                tessera_core::shown(url, 100)
            );
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port_text) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, tail)) => (&authority[..h.len() + 2], tail.strip_prefix(':')),
                None => bail!("--mlflow {url}: an IPv6 host without its closing ']'"),
            },
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port_text {
            Some(p) => p
                .parse::<u16>()
                .with_context(|| format!("--mlflow {url}: the port '{p}' is not a number"))?,
            None => 80,
        };
        if host.is_empty()
            || host == "[]"
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
        {
            bail!("--mlflow {}: no host in it", tessera_core::shown(url, 100));
        }
        let path = path.trim_end_matches('/');
        Ok(Server {
            host: host.to_string(),
            port,
            base: if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            },
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// One request; the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let fail = || format!("MLflow at {}: {method} {path}", self.url);
        let addresses: Vec<_> = (self.host.trim_matches(|c| c == '[' || c == ']'), self.port)
            .to_socket_addrs()
            .with_context(fail)?
            .collect();
        // Each address in turn (localhost may be ::1 first, and the server
        // on 127.0.0.1 only).
        let mut last = None;
        let mut connected = None;
        for address in &addresses {
            match TcpStream::connect_timeout(address, Duration::from_secs(10)) {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match (connected, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e).with_context(fail),
            (None, None) => bail!("{}: the host has no address", fail()),
        };
        stream.set_write_timeout(Some(Duration::from_secs(120)))?;
        let head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nAccept: application/json\r\nConnection: close\r\n\
             User-Agent: tessera/{}\r\n\r\n",
            self.base,
            self.host,
            self.port,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(head.as_bytes()).with_context(fail)?;
        stream.write_all(body).with_context(fail)?;
        // Read until the reply is whole (its Content-Length, or its last
        // chunk), the server closes, or two minutes in all have passed.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut reply = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            if reply_is_whole(&reply) {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!("{}: no whole reply within 120 s", fail());
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!("{}: no whole reply within 120 s", fail());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(fail),
            }
            if reply.len() as u64 > MAX_REPLY {
                bail!("{}: a reply over 32 MiB", fail());
            }
        }
        parse_reply(&reply).with_context(fail)
    }

    /// A JSON request; MLflow's error, named, on any status but 200.
    fn call(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body)?
        };
        let (status, reply) = self.request(method, path, "application/json", &bytes)?;
        let parsed = serde_json::from_slice::<Value>(&reply);
        if status == 200 && parsed.is_err() {
            bail!(
                "MLflow at {}: {method} {path}: a reply that is not JSON (is this an MLflow \
                 tracking server?): {}",
                self.url,
                tessera_core::shown(&String::from_utf8_lossy(&reply), 200)
            );
        }
        let value = parsed.unwrap_or(Value::Null);
        if status != 200 {
            let code = value["error_code"].as_str().unwrap_or("");
            let message = value["message"]
                .as_str()
                .map(|m| tessera_core::shown(m, 300).to_string())
                .unwrap_or_else(|| {
                    tessera_core::shown(&String::from_utf8_lossy(&reply), 300).to_string()
                });
            bail!(
                "MLflow at {}: {method} {path}: HTTP {status} {code}: {message}",
                self.url
            );
        }
        Ok(value)
    }

    /// The id of experiment `name`, made if missing.
    fn experiment(&self, name: &str) -> anyhow::Result<String> {
        let path = format!(
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name={}",
            encoded(name)
        );
        match self.call("GET", &path, &Value::Null) {
            Ok(v) => {
                if let Some(id) = v["experiment"]["experiment_id"].as_str() {
                    return Ok(id.to_string());
                }
            }
            Err(e) if e.to_string().contains("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        let made = self.call(
            "POST",
            "/api/2.0/mlflow/experiments/create",
            &json!({ "name": name }),
        )?;
        made["experiment_id"]
            .as_str()
            .map(str::to_string)
            .context("MLflow made the experiment but gave no id")
    }
}

/// Whether `reply` holds a whole reply: its headers and all of the body
/// its Content-Length or its chunks announce. A reply with neither is
/// whole only when the server closes.
fn reply_is_whole(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    if head.contains("transfer-encoding:") && head.contains("chunked") {
        return parse_reply(reply).is_ok();
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| reply.len() >= end + 4 + n)
}

/// Status, body of an HTTP/1.1 reply (chunked or not).
fn parse_reply(reply: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("a reply without a header's end")?;
    let head = String::from_utf8_lossy(&reply[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .context("a reply without a status")?;
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        let line = line.to_ascii_lowercase();
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = Some(
                v.trim()
                    .parse::<usize>()
                    .context("a Content-Length that is not a number")?,
            );
        }
    }
    let mut body = &reply[end + 4..];
    if !chunked {
        return match length {
            Some(n) if body.len() < n => bail!("a reply cut short ({} of {n} bytes)", body.len()),
            Some(n) => Ok((status, body[..n].to_vec())),
            None => Ok((status, body.to_vec())),
        };
    }
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("a chunk size that is not a number")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if body.len() < size {
            bail!("a chunk cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

/// What an export did.
pub struct Exported {
    /// The MLflow run's id.
    pub run_id: String,
    /// False where the run was already there and nothing was logged.
    pub logged: bool,
    /// Artifacts not written (the server keeps artifacts where this
    /// bridge cannot reach), with why.
    pub skipped_artifacts: Option<String>,
}

/// Logs `t` and `files` (name, bytes) to the server at `url`, in
/// experiment `experiment` (default: the plan's name).
pub fn export(
    url: &str,
    experiment: Option<&str>,
    t: &Tracked,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<Exported> {
    let server = Server::new(url)?;
    let experiment_id = server.experiment(experiment.unwrap_or(&t.name))?;
    let tessera_id = t.id.replace(['\'', '\\', '`'], "_");
    let found = server.call(
        "POST",
        "/api/2.0/mlflow/runs/search",
        &json!({
            "experiment_ids": [experiment_id],
            "filter": format!("tags.`tessera.run_id` = '{tessera_id}'"),
            "max_results": 10,
        }),
    )?;
    // A run logged whole, as the run stands now, is not logged again; one
    // an export left half done (or logged while the run was still going)
    // is deleted and logged anew.
    for run in found["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let Some(id) = run["info"]["run_id"].as_str() else {
            continue;
        };
        let tag = |k: &str| {
            run["data"]["tags"]
                .as_array()
                .and_then(|tags| tags.iter().find(|t| t["key"] == k))
                .and_then(|t| t["value"].as_str())
                .map(str::to_string)
        };
        if tag("tessera.export").as_deref() == Some("complete")
            && tag("tessera.status").as_deref() == Some(t.status.as_str())
        {
            return Ok(Exported {
                run_id: id.to_string(),
                logged: false,
                skipped_artifacts: None,
            });
        }
        server.call(
            "POST",
            "/api/2.0/mlflow/runs/delete",
            &json!({ "run_id": id }),
        )?;
    }
    let start_ms = t.created_unix_micros / 1000;
    let mut tags = vec![
        ("tessera.run_id".to_string(), tessera_id.clone()),
        ("tessera.runtime".to_string(), t.runtime.to_string()),
        ("tessera.status".to_string(), t.status.clone()),
        ("tessera.code_version".to_string(), t.code_version.clone()),
        ("tessera.plan_sha256".to_string(), t.plan_sha256.clone()),
        ("mlflow.source.name".to_string(), "tessera".to_string()),
    ];
    if let Some((epsilon, delta)) = t.privacy {
        tags.push(("tessera.privacy.epsilon".into(), epsilon.to_string()));
        tags.push(("tessera.privacy.delta".into(), delta.to_string()));
    }
    if let Some((epsilon, delta)) = t.metrics_privacy {
        tags.push((
            "tessera.privacy.metrics_epsilon".into(),
            epsilon.to_string(),
        ));
        tags.push(("tessera.privacy.metrics_delta".into(), delta.to_string()));
    }
    // Site names as keys; two that would read alike get their hash's
    // start, so that no tag is written twice.
    let keyed: Vec<String> = t.sites.keys().map(|s| key(s)).collect();
    for ((site, f), k) in t.sites.iter().zip(&keyed) {
        let site = if keyed.iter().filter(|x| *x == k).count() > 1 {
            format!("{k}-{}", &crate::tracking::sha256_hex(site.as_bytes())[..8])
        } else {
            k.clone()
        };
        tags.push((
            format!("tessera.site.{site}.layout_sha256"),
            f.schema_sha256.clone(),
        ));
        tags.push((
            format!("tessera.site.{site}.rows"),
            format!("{} train, {} test", f.train_rows, f.test_rows),
        ));
    }
    let as_pairs = |pairs: &[(String, String)]| -> Vec<Value> {
        pairs
            .iter()
            .map(|(k, v)| json!({ "key": key(k), "value": v }))
            .collect()
    };
    let created = server.call(
        "POST",
        "/api/2.0/mlflow/runs/create",
        &json!({
            "experiment_id": experiment_id,
            "run_name": t.id,
            "start_time": start_ms,
            "tags": as_pairs(&tags[..tags.len().min(TAGS_PER_BATCH)]),
        }),
    )?;
    let info = &created["run"]["info"];
    let run_id = info["run_id"]
        .as_str()
        .context("MLflow made the run but gave no id")?
        .to_string();
    for chunk in tags
        .get(TAGS_PER_BATCH..)
        .unwrap_or(&[])
        .chunks(TAGS_PER_BATCH)
    {
        log_batch(&server, &run_id, &[], &[], &as_pairs(chunk))?;
    }
    let params: Vec<(String, String)> = flatten(&t.plan)
        .into_iter()
        .map(|(k, v)| {
            let v: String = v.chars().take(MAX_PARAM_VALUE).collect();
            (k, v)
        })
        .collect();
    for chunk in params.chunks(PARAMS_PER_BATCH) {
        log_batch(&server, &run_id, &as_pairs(chunk), &[], &[])?;
    }
    let mut metrics = Vec::new();
    for r in &t.rounds {
        // The round's close on the run clock.
        let at_ms = start_ms + (r.at_seconds.max(0.0) * 1000.0) as u64;
        let mut put = |k: &str, v: f64| {
            if v.is_finite() {
                metrics.push(json!({
                    "key": k, "value": v, "timestamp": at_ms, "step": r.round
                }));
            }
        };
        if r.n_test > 0 {
            put("accuracy", r.accuracy);
            put("mean_site_accuracy", r.mean_site_accuracy);
            put("loss", r.loss);
            if let Some(auc) = r.auc {
                put("auc", auc);
            }
        }
        put("accepted", r.accepted as f64);
        if let Some(e) = r.epsilon {
            put("epsilon", e);
        }
    }
    for chunk in metrics.chunks(METRICS_PER_BATCH) {
        log_batch(&server, &run_id, &[], chunk, &[])?;
    }
    // Artifacts through the server's proxy, where it has one.
    let uri = info["artifact_uri"].as_str().unwrap_or("");
    let skipped_artifacts = match uri.strip_prefix("mlflow-artifacts:") {
        Some(rest) => {
            let root = rest.trim_start_matches('/');
            for (name, bytes) in files {
                let path = format!(
                    "/api/2.0/mlflow-artifacts/artifacts/{root}/{}",
                    encoded(name)
                );
                let (status, reply) =
                    server.request("PUT", &path, "application/octet-stream", bytes)?;
                if status != 200 {
                    bail!(
                        "MLflow at {}: storing artifact {name}: HTTP {status}: {}",
                        server.url,
                        tessera_core::shown(&String::from_utf8_lossy(&reply), 300)
                    );
                }
            }
            None
        }
        None if files.is_empty() => None,
        None => Some(format!(
            "the server keeps this run's artifacts at '{}', which only it can write; start \
             it with artifact serving (mlflow server's default) to receive them",
            tessera_core::shown(uri, 200)
        )),
    };
    let status = match t.status.as_str() {
        "finished" | "stopped" => "FINISHED",
        "aborted" => "KILLED",
        _ => "RUNNING",
    };
    let mut update = json!({ "run_id": run_id, "status": status });
    if status != "RUNNING" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(start_ms, |d| d.as_millis() as u64);
        update["end_time"] = json!(now.max(start_ms));
    }
    server.call("POST", "/api/2.0/mlflow/runs/update", &update)?;
    // Last: the mark that the run is whole.
    server.call(
        "POST",
        "/api/2.0/mlflow/runs/set-tag",
        &json!({ "run_id": run_id, "key": "tessera.export", "value": "complete" }),
    )?;
    Ok(Exported {
        run_id,
        logged: true,
        skipped_artifacts,
    })
}

fn log_batch(
    server: &Server,
    run_id: &str,
    params: &[Value],
    metrics: &[Value],
    tags: &[Value],
) -> anyhow::Result<()> {
    server.call(
        "POST",
        "/api/2.0/mlflow/runs/log-batch",
        &json!({ "run_id": run_id, "params": params, "metrics": metrics, "tags": tags }),
    )?;
    Ok(())
}

/// Says what an export did, on stdout.
pub fn say(url: &str, e: &Exported) {
    if e.logged {
        println!("logged to MLflow at {url}: run {}", e.run_id);
    } else {
        println!(
            "already in MLflow at {url} as run {}: not logged again",
            e.run_id
        );
    }
    if let Some(why) = &e.skipped_artifacts {
        eprintln!("warning: artifacts not sent: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_plain_and_chunked_and_bad_ones_are_refused() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_reply(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_reply(chunked).unwrap(), (404, b"abcde".to_vec()));
        for bad in [
            &b"garbage"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nff\r\nshort",
        ] {
            assert!(
                parse_reply(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A server that answers with a Content-Length and keeps the
    /// connection open: the reply is whole at once; a reply cut short
    /// before the server closes is refused, saying so; a 200 that is not
    /// JSON names itself.
    #[test]
    fn replies_end_at_their_length_not_at_the_close() {
        use std::net::TcpListener;
        let serve = |reply: &'static [u8], close: bool| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                conn.write_all(reply).unwrap();
                if !close {
                    std::thread::sleep(Duration::from_secs(30));
                }
            });
            Server::new(&format!("http://127.0.0.1:{port}")).unwrap()
        };
        let started = std::time::Instant::now();
        let s = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\": true}",
            false,
        );
        assert_eq!(
            s.call("GET", "/x", &Value::Null).unwrap(),
            json!({"a": true})
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let s = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"a\"", true);
        let e = s.call("GET", "/x", &Value::Null).unwrap_err();
        assert!(
            format!("{e:#}").contains("cut short (4 of 50 bytes)"),
            "{e:#}"
        );
        let s = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>", true);
        let e = s.call("GET", "/x", &Value::Null).unwrap_err().to_string();
        assert!(
            e.contains("not JSON (is this an MLflow tracking server?): <html>"),
            "{e}"
        );
    }

    #[test]
    fn urls_and_keys() {
        let s = Server::new("http://127.0.0.1:5000/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.base.as_str()),
            ("127.0.0.1", 5000, "")
        );
        let s = Server::new("http://mlflow.example.org/prefix").unwrap();
        assert_eq!((s.port, s.base.as_str()), (80, "/prefix"));
        let s = Server::new("http://[::1]").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("[::1]", 80));
        let s = Server::new("http://[::1]:5000/").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("[::1]", 5000));
        for bad in [
            "https://x:1",
            "http://:5000",
            "http://x:port",
            "x:5000",
            "http://[::1",
        ] {
            assert!(Server::new(bad).is_err(), "{bad}");
        }
        assert_eq!(key("tessera.site.st-gallen/ü"), "tessera.site.st-gallen/ü");
        assert_eq!(key("a&b+c"), "a_b_c");
        assert_eq!(encoded("a b&c"), "a%20b%26c");
    }
}
