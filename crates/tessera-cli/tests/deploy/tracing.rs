//! Distributed tracing: a deployed run whose coordinator and participants
//! export over OTLP (`--otlp`) to a receiver built here on the OTLP
//! protobuf definitions. Each round is one trace: the coordinator's round
//! span at its root, and under it the task, training and upload of every
//! participant, the aggregation and the evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::util::procs::{
    HEART_SITES, Proc, aggregator, coordinator, participant, participant_with,
};
use crate::util::{self, Scratch};
use crate::{LIMIT, heart_text};

/// What the receiver was sent.
#[derive(Default, Clone)]
pub(crate) struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One span as the test reads it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    links: Vec<Vec<u8>>,
    attributes: BTreeMap<String, String>,
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// Every text the receiver was sent, one a span or span event: names,
/// attribute values and the resources'.
pub(crate) fn exported_text(received: &Received) -> Vec<String> {
    let mut out = Vec::new();
    for request in received.0.lock().unwrap().iter() {
        for resource in &request.resource_spans {
            if let Some(r) = &resource.resource {
                out.push(format!("{:?}", text(&r.attributes)));
            }
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                out.push(format!("{} {:?}", span.name, text(&span.attributes)));
                for event in &span.events {
                    out.push(format!("{} {:?}", event.name, text(&event.attributes)));
                }
            }
        }
    }
    out
}

fn spans(received: &Received) -> Vec<Span> {
    let mut out = Vec::new();
    for request in received.0.lock().unwrap().iter() {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| text(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    out.push(Span {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace: span.trace_id.clone(),
                        id: span.span_id.clone(),
                        parent: span.parent_span_id.clone(),
                        links: span.links.iter().map(|l| l.span_id.clone()).collect(),
                        attributes: text(&span.attributes),
                    });
                }
            }
        }
    }
    out
}

/// An OTLP/gRPC receiver on 127.0.0.1: its URL and what it receives.
pub(crate) fn collector(runtime: &tokio::runtime::Runtime) -> (String, Received) {
    serve(runtime, None)
}

/// An OTLP/gRPC receiver on 127.0.0.1 over TLS: presenting the certificate
/// in the folder `server`, asking every exporter for a certificate from
/// the CA in `server` too. Its `https://` URL and what it receives.
fn collector_over_tls(
    runtime: &tokio::runtime::Runtime,
    server: &std::path::Path,
) -> (String, Received) {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let pem = |file: &str| std::fs::read_to_string(server.join(file)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(pem("cert.pem"), pem("key.pem")))
        .client_ca_root(Certificate::from_pem(pem("ca.pem")));
    serve(runtime, Some(tls))
}

fn serve(
    runtime: &tokio::runtime::Runtime,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> (String, Received) {
    let received = Received::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).unwrap();
    }
    runtime.spawn(
        server
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, received)
}

/// Checks that each of `rounds` rounds is one trace, a tree under the
/// coordinator's round span, holding every one of `sites`' tasks with
/// their training and upload (and, with `evaluated`, their evaluation),
/// each upload linked from the receiving side's span. The traces.
fn one_trace_a_round<'a>(
    spans: &'a [Span],
    rounds: u32,
    sites: &[&str],
    evaluated: bool,
) -> Vec<Vec<&'a Span>> {
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "tessera-coordinator" && s.name == "round")
        .collect();
    assert_eq!(roots.len(), rounds as usize, "{spans:#?}");
    let traces: BTreeSet<&Vec<u8>> = roots.iter().map(|r| &r.trace).collect();
    assert_eq!(traces.len(), roots.len(), "one trace a round");
    let mut out = Vec::new();
    for root in &roots {
        let round = root.attributes.get("round").cloned().unwrap_or_default();
        let trace: Vec<&Span> = spans.iter().filter(|s| s.trace == root.trace).collect();
        let ids: BTreeSet<&Vec<u8>> = trace.iter().map(|s| &s.id).collect();
        // One tree: the round's span its only root, every other span's
        // parent in the same trace.
        for span in &trace {
            if span.id == root.id {
                assert!(
                    span.parent.is_empty(),
                    "round {round}: the round has a parent"
                );
            } else {
                assert!(
                    ids.contains(&span.parent),
                    "round {round}: {} of {} has its parent outside the trace",
                    span.name,
                    span.service
                );
            }
        }
        let of = |service: &str, name: &str| -> Vec<&Span> {
            trace
                .iter()
                .copied()
                .filter(|s| s.service == service && s.name == name)
                .collect()
        };
        assert_eq!(
            of("tessera-coordinator", "aggregate").len(),
            1,
            "round {round}"
        );
        assert_eq!(
            of("tessera-coordinator", "evaluation").len(),
            1,
            "round {round}"
        );
        // Every site's task, training and upload.
        let tasks = of("tessera-participant", "task");
        let seen: BTreeSet<&str> = tasks
            .iter()
            .filter_map(|t| t.attributes.get("site").map(String::as_str))
            .collect();
        assert_eq!(seen, sites.iter().copied().collect(), "round {round}");
        let mut names = vec!["train", "upload"];
        if evaluated {
            names.push("evaluate");
        }
        for name in names {
            let n = of("tessera-participant", name).len();
            assert_eq!(n, sites.len(), "round {round}: {name}");
        }
        // The receiving side's span of each update links to (and is never
        // a child of) the sender's upload.
        let uploads: BTreeSet<&Vec<u8>> = trace
            .iter()
            .filter(|s| s.name == "upload")
            .map(|u| &u.id)
            .collect();
        let received: Vec<&Span> = trace
            .iter()
            .copied()
            .filter(|s| s.name == "receive_update")
            .collect();
        assert!(received.len() >= sites.len(), "round {round}");
        for update in received {
            assert!(
                update.links.iter().any(|l| uploads.contains(l)),
                "round {round}: an update without its upload's link"
            );
        }
        out.push(trace);
    }
    out
}

/// A Fed-Heart-Disease run of `plan`, every process exporting with the
/// arguments `otlp` (`--otlp URL`, maybe `--otlp-tls DIR`), run to its
/// end: the coordinator and the participants, each finished well.
fn traced_run(s: &Scratch, plan: &std::path::Path, otlp: &[&str]) -> (Proc, Vec<Proc>) {
    let mut args = vec!["--report", "dep.json"];
    args.extend_from_slice(otlp);
    let (mut coordinator, url) = coordinator(&s.dir, plan, &s.path("run.sqlite"), 0, &args);
    let mut participants: Vec<Proc> = HEART_SITES
        .iter()
        .map(|site| participant(&s.dir, &url, site, otlp))
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut participants {
        assert!(p.wait(LIMIT).success(), "{}", p.log());
    }
    (coordinator, participants)
}

#[test]
fn each_round_is_one_trace_across_the_coordinator_and_every_participant() {
    if util::skip_e2e("each_round_is_one_trace_across_the_coordinator_and_every_participant") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (otlp, received) = collector(&runtime);
    let s = Scratch::new("deploy-tracing");
    let rounds = 3;
    let plan = s.write("plan.toml", &heart_text(&s, rounds));
    traced_run(&s, &plan, &["--otlp", &otlp]);
    // Every process sent its last spans before it exited.
    let spans = spans(&received);
    for (round, trace) in one_trace_a_round(&spans, rounds, &HEART_SITES, true)
        .iter()
        .enumerate()
    {
        // The coordinator's span of each update is a child of its own
        // round, never of the participant's.
        let root = trace.iter().find(|s| s.name == "round").unwrap();
        for update in trace.iter().filter(|s| s.name == "receive_update") {
            assert_eq!(update.parent, root.id, "round {}", round + 1);
        }
        eprintln!(
            "round {}: one trace of {} spans, the coordinator's and {} participants'",
            round + 1,
            trace.len(),
            HEART_SITES.len()
        );
    }
    // Joins are traces of their own, the coordinator's linked to each site's.
    let joins: BTreeSet<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.service == "tessera-participant" && s.name == "join")
        .map(|j| &j.id)
        .collect();
    assert!(joins.len() >= HEART_SITES.len(), "{joins:?}");
    let linked = spans
        .iter()
        .filter(|s| s.service == "tessera-coordinator" && s.name == "join")
        .filter(|j| j.links.iter().any(|l| joins.contains(l)))
        .count();
    assert!(linked >= HEART_SITES.len(), "{linked}");
}

#[test]
fn a_hierarchical_round_is_one_trace_through_its_aggregators() {
    if util::skip_e2e("a_hierarchical_round_is_one_trace_through_its_aggregators") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (otlp, received) = collector(&runtime);
    let s = Scratch::new("deploy-tracing-tree");
    let rounds = 3;
    let groups = "kind = \"hierarchical\"\n\n[[topology.groups]]\nname = \"east\"\nmembers = [\"site0\", \"site1\", \"site2\"]\n\n[[topology.groups]]\nname = \"west\"\nmembers = [\"site3\", \"site4\", \"site5\"]\n";
    let (plan, data) = util::synthetic(&s, 6, rounds, groups);
    let traced = ["--otlp", otlp.as_str()];
    let (mut root, url) = coordinator(&s.dir, &plan, &s.path("root.sqlite"), 0, &traced);
    let mut procs = Vec::new();
    for (region, members) in [("east", 0..3), ("west", 3..6)] {
        let db = s.path(&format!("{region}.sqlite"));
        let (proc, region_url) = aggregator(&s.dir, &url, region, &db, 0, &traced);
        procs.push(proc);
        for i in members {
            let site = format!("site{i}");
            procs.push(participant_with(&s.dir, &region_url, &site, &data, &traced));
        }
    }
    assert!(root.wait(LIMIT).success(), "{}", root.log());
    for p in &mut procs {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
    let spans = spans(&received);
    let sites = ["site0", "site1", "site2", "site3", "site4", "site5"];
    for (round, trace) in one_trace_a_round(&spans, rounds, &sites, false)
        .iter()
        .enumerate()
    {
        // Each aggregator's task, and the round it opened for it below.
        let regions = |name: &str| -> BTreeSet<String> {
            trace
                .iter()
                .filter(|s| s.service == "tessera-aggregator" && s.name == name)
                .filter_map(|s| s.attributes.get("site").cloned())
                .collect()
        };
        assert_eq!(
            regions("task").len(),
            2,
            "round {}: {:?}",
            round + 1,
            regions("task")
        );
        let below = trace
            .iter()
            .filter(|s| s.service == "tessera-aggregator" && s.name == "round")
            .count();
        assert_eq!(below, 2, "round {}", round + 1);
        eprintln!(
            "round {}: one trace of {} spans: the root's, 2 aggregators' and 6 participants'",
            round + 1,
            trace.len()
        );
    }
}

/// An asynchronous run (FedBuff): each step is one trace, from the step
/// before it until it is taken, holding the tasks handed out meanwhile
/// with every participant's spans of them, and the updates whose upload
/// began meanwhile (a step taken by updates already in flight may hold
/// none); each update links to its upload, wherever that is.
#[test]
fn an_asynchronous_step_is_one_trace() {
    if util::skip_e2e("an_asynchronous_step_is_one_trace") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (otlp, received) = collector(&runtime);
    let s = Scratch::new("deploy-tracing-async");
    let (plan, data) = util::synthetic(&s, 4, 6, "");
    let text = std::fs::read_to_string(&plan).unwrap().replace(
        "[federation]",
        "[federation]\nmode = \"async\"\nbuffer_size = 2",
    );
    std::fs::write(&plan, text).unwrap();
    let traced = ["--otlp", otlp.as_str()];
    let (mut coordinator, url) = coordinator(&s.dir, &plan, &s.path("a.sqlite"), 0, &traced);
    let mut sites: Vec<Proc> = (0..4)
        .map(|i| participant_with(&s.dir, &url, &format!("site{i}"), &data, &traced))
        .collect();
    assert!(coordinator.wait(LIMIT).success(), "{}", coordinator.log());
    for p in &mut sites {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
    let spans = spans(&received);
    let steps: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "tessera-coordinator" && s.name == "round")
        .collect();
    // Six steps, then the final evaluation of the last model (a round of
    // its own, with the coordinator's `evaluation` span in it).
    let evaluated: BTreeSet<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.service == "tessera-coordinator" && s.name == "evaluation")
        .map(|s| &s.trace)
        .collect();
    let numbers: BTreeSet<String> = steps
        .iter()
        .filter_map(|s| s.attributes.get("round").cloned())
        .collect();
    assert!(
        (1..=6).all(|r| numbers.contains(&r.to_string())),
        "{numbers:?}"
    );
    let traces: BTreeSet<&Vec<u8>> = steps.iter().map(|s| &s.trace).collect();
    assert_eq!(traces.len(), steps.len(), "one trace a step");
    let uploads: BTreeSet<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.name == "upload")
        .map(|s| &s.id)
        .collect();
    let filled: Vec<&&Span> = steps
        .iter()
        .filter(|s| !evaluated.contains(&s.trace))
        .collect();
    assert_eq!(filled.len(), 6, "{numbers:?}");
    let (mut updates, mut tasks) = (0, 0);
    for step in filled {
        let round = &step.attributes["round"];
        let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace == step.trace).collect();
        let of = |service: &str, name: &str| {
            in_trace
                .iter()
                .filter(|s| s.service == service && s.name == name)
                .count()
        };
        // An update's span is under the step open when its upload began.
        updates += of("tessera-coordinator", "receive_update");
        tasks += of("tessera-participant", "task");
        let received: Vec<&&Span> = in_trace
            .iter()
            .filter(|s| s.name == "receive_update")
            .collect();
        for update in received {
            assert_eq!(update.parent, step.id, "step {round}");
            assert!(
                update.links.iter().any(|l| uploads.contains(l)),
                "step {round}: an update without its upload's link"
            );
        }
        eprintln!(
            "step {round}: one trace of {} spans, {} tasks handed out, {} updates received",
            in_trace.len(),
            of("tessera-coordinator", "send_task"),
            of("tessera-coordinator", "receive_update")
        );
    }
    // Every buffer's updates (stale ones are received too), and tasks.
    assert!(updates >= 12, "{updates}");
    assert!(tasks >= 12, "{tasks}");
    // Every participant's training lies in a step's trace.
    let trained_outside = spans
        .iter()
        .filter(|s| s.name == "train" && !traces.contains(&s.trace))
        .count();
    assert_eq!(trained_outside, 0);
}

/// Gossip peers (`tessera peer --otlp`), with no coordinator to root a
/// round: each round is one trace across every peer, its round span and
/// under it its training, a fetch of each living neighbour's model a step,
/// and its evaluation; the trace's root is the parent every peer derives
/// from the peers' nonces, never exported. Each round a trace of its own.
#[test]
fn a_gossip_round_is_one_trace_across_the_peers() {
    if util::skip_e2e("a_gossip_round_is_one_trace_across_the_peers") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (otlp, received) = collector(&runtime);
    let s = Scratch::new("deploy-tracing-gossip");
    let (n, rounds) = (4usize, 3u32);
    let topology = "kind = \"gossip\"\ngraph = \"ring\"\ngossip_steps = 2";
    let (plan, data) = util::synthetic(&s, n, rounds, topology);
    let ports: Vec<u16> = (0..n).map(|_| crate::util::procs::free_port()).collect();
    let mut peers: Vec<Proc> = (0..n)
        .map(|i| {
            let (site, listen) = (format!("site{i}"), format!("127.0.0.1:{}", ports[i]));
            let mut args: Vec<String> = vec![
                "peer".into(),
                "--plan".into(),
                plan.display().to_string(),
                "--site".into(),
                site.clone(),
                "--data".into(),
                data.display().to_string(),
                "--listen".into(),
                listen,
                "--insecure".into(),
                "--otlp".into(),
                otlp.clone(),
            ];
            for (j, port) in ports.iter().enumerate().filter(|(j, _)| *j != i) {
                args.push("--peer".into());
                args.push(format!("site{j}=http://127.0.0.1:{port}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc::start(&site, &s.dir, &args, None)
        })
        .collect();
    for p in &mut peers {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
    let spans = spans(&received);
    let ids: BTreeSet<&Vec<u8>> = spans.iter().map(|s| &s.id).collect();
    let mut traces = BTreeSet::new();
    for round in 1..=rounds {
        let roots: Vec<&Span> = spans
            .iter()
            .filter(|s| s.service == "tessera-peer" && s.name == "round")
            .filter(|s| s.attributes.get("round") == Some(&round.to_string()))
            .collect();
        let sites: BTreeSet<&str> = roots
            .iter()
            .filter_map(|r| r.attributes.get("site").map(String::as_str))
            .collect();
        assert_eq!(sites.len(), n, "round {round}: {sites:?}");
        assert_eq!(roots.len(), n, "round {round}");
        // One trace, one (unexported) parent.
        let trace = &roots[0].trace;
        assert!(roots.iter().all(|r| &r.trace == trace), "round {round}");
        let parent = &roots[0].parent;
        assert!(!parent.is_empty() && !ids.contains(parent), "round {round}");
        assert!(roots.iter().all(|r| &r.parent == parent), "round {round}");
        assert!(
            traces.insert(trace.clone()),
            "round {round}: another round's trace"
        );
        // Under each peer's round: its training, its fetches, its evaluation.
        let in_trace: Vec<&Span> = spans.iter().filter(|s| &s.trace == trace).collect();
        for root in &roots {
            let children = |name: &str| {
                in_trace
                    .iter()
                    .filter(|s| s.parent == root.id && s.name == name)
                    .count()
            };
            let site = &root.attributes["site"];
            assert_eq!(children("train"), 1, "round {round} {site}");
            assert_eq!(children("evaluate"), 1, "round {round} {site}");
            // Two neighbours on a ring, two averaging steps.
            assert_eq!(children("fetch"), 4, "round {round} {site}");
        }
        eprintln!(
            "gossip round {round}: one trace of {} spans across {n} peers",
            in_trace.len()
        );
    }
}

/// Traces reach a collector over TLS (`https://` with `--otlp-tls`) that
/// asks each exporter for a client certificate: one trace a round, as over
/// plain gRPC. With roots that do not verify the collector, or without the
/// client certificate it asks for, the collector receives nothing and the
/// run finishes as it would.
#[test]
fn traces_reach_a_collector_over_tls_and_only_a_verified_one() {
    if util::skip_e2e("traces_reach_a_collector_over_tls_and_only_a_verified_one") {
        return;
    }
    let s = Scratch::new("deploy-tracing-tls");
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["ca", "init"]);
    ca(&["ca", "issue", "--coordinator", "--host", "127.0.0.1"]);
    ca(&["ca", "issue", "--site", "exporter"]);
    ca(&["other", "init"]);
    // The exporters' folder: the collector's CA, and a certificate from it.
    let folder = |name: &str, ca_of: &str, with_cert: bool| {
        let dir = s.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(s.path(ca_of).join("ca.pem"), dir.join("ca.pem")).unwrap();
        if with_cert {
            for file in ["cert.pem", "key.pem"] {
                let from = s.path("ca/sites/exporter").join(file);
                std::fs::copy(from, dir.join(file)).unwrap();
            }
        }
        dir.to_str().unwrap().to_string()
    };
    let trusting = folder("otlp-tls", "ca", true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (otlp, received) = collector_over_tls(&runtime, &s.path("ca/coordinator"));
    assert!(otlp.starts_with("https://"), "{otlp}");
    let rounds = 2;
    let plan = s.write("plan.toml", &heart_text(&s, rounds));
    traced_run(&s, &plan, &["--otlp", &otlp, "--otlp-tls", &trusting]);
    let spans_received = spans(&received);
    let traces = one_trace_a_round(&spans_received, rounds, &HEART_SITES, true);
    eprintln!(
        "over TLS: {} traces of {:?} spans",
        traces.len(),
        traces.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // Another CA's roots, then the right roots without a client
    // certificate: nothing is received, and every run ends well.
    for (name, dir) in [
        ("distrusting", folder("distrusting", "other", false)),
        ("anonymous", folder("anonymous", "ca", false)),
    ] {
        let (otlp, received) = collector_over_tls(&runtime, &s.path("ca/coordinator"));
        let s = Scratch::new(&format!("deploy-tracing-tls-{name}"));
        let plan = s.write("plan.toml", &heart_text(&s, 1));
        let (coordinator, _) = traced_run(&s, &plan, &["--otlp", &otlp, "--otlp-tls", &dir]);
        assert!(spans(&received).is_empty(), "{name}");
        assert!(
            coordinator.log().contains("ExportError"),
            "{name}: {}",
            coordinator.log()
        );
    }
}

/// `--otlp` is refused where nothing would be traced, and with TLS asked
/// for wrongly, before any work.
#[test]
fn otlp_refuses_what_it_cannot_trace() {
    let s = Scratch::new("deploy-tracing-refused");
    let refused = s.run(&["protocol", "--otlp", "http://127.0.0.1:4317"]);
    assert_eq!(
        refused.output.status.code(),
        Some(2),
        "{}",
        refused.stderr()
    );
    assert!(
        refused.stderr().contains("--otlp traces the coordinator"),
        "{}",
        refused.stderr()
    );
    let participant = |otlp: &[&str]| {
        let mut args = vec!["participant"];
        args.extend_from_slice(otlp);
        args.extend_from_slice(&[
            "--coordinator",
            "http://127.0.0.1:1",
            "--site",
            "a",
            "--data",
            "a.csv",
            "--insecure",
        ]);
        let refused = s.run(&args);
        assert_eq!(
            refused.output.status.code(),
            Some(2),
            "{}",
            refused.stderr()
        );
        refused.stderr()
    };
    let https = "https://collector.example:4317";
    let stderr = participant(&["--otlp", https]);
    assert!(stderr.contains("give --otlp-tls DIR"), "{stderr}");
    let stderr = participant(&["--otlp", "http://127.0.0.1:4317", "--otlp-tls", "."]);
    assert!(stderr.contains("--otlp-tls is for a collector"), "{stderr}");
    std::fs::create_dir_all(s.path("empty")).unwrap();
    let stderr = participant(&["--otlp", https, "--otlp-tls", "empty"]);
    assert!(stderr.contains("ca.pem"), "{stderr}");
    std::fs::create_dir_all(s.path("half")).unwrap();
    s.write("half/ca.pem", "not a certificate");
    let stderr = participant(&["--otlp", https, "--otlp-tls", "half"]);
    assert!(stderr.contains("ca.pem"), "{stderr}");
    s.run(&["ca", "--dir", "ca", "init"]).ok();
    std::fs::copy(s.path("ca/ca.pem"), s.path("half/ca.pem")).unwrap();
    s.write("half/cert.pem", "");
    let stderr = participant(&["--otlp", https, "--otlp-tls", "half"]);
    assert!(stderr.contains("cert.pem without key.pem"), "{stderr}");
    let bad = s.run(&[
        "coordinator",
        "--otlp",
        "not a url",
        "--plan",
        "p.toml",
        "--db",
        "run.sqlite",
        "--insecure",
    ]);
    assert_eq!(bad.output.status.code(), Some(2), "{}", bad.stderr());
    assert!(bad.stderr().contains("is not a URL"), "{}", bad.stderr());
}

/// A collector that is down costs the spans and nothing else: the run
/// finishes as it would, and each process says what it could not send.
#[test]
fn a_collector_that_is_down_costs_only_the_spans() {
    if util::skip_e2e("a_collector_that_is_down_costs_only_the_spans") {
        return;
    }
    let s = Scratch::new("deploy-tracing-down");
    let otlp = format!("http://127.0.0.1:{}", crate::util::procs::free_port());
    let plan = s.write("plan.toml", &heart_text(&s, 2));
    let started = std::time::Instant::now();
    let (coordinator, participants) = traced_run(&s, &plan, &["--otlp", &otlp]);
    let report = s.json("dep.json");
    assert_eq!(
        report["rounds"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    for log in std::iter::once(coordinator.log()).chain(participants.iter().map(|p| p.log())) {
        assert!(log.contains("ExportError"), "{log}");
    }
    eprintln!(
        "2 rounds with the collector down in {:.1} s; the coordinator's log:\n{}",
        started.elapsed().as_secs_f64(),
        coordinator.log()
    );
}
