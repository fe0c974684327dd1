//! Gossip over gRPC with real processes on 127.0.0.1 (`tessera peer`, no
//! coordinator): every site's model equals the gossip simulation's; a peer
//! killed with SIGKILL midway is lost by its neighbours and the rest finish;
//! a peer killed and restarted rejoins, the others waiting for it no longer
//! than the liveness period;
//! mutual TLS from the federation's CA, with an impostor and a revoked peer
//! refused, before the run and midway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use util::Scratch;
use util::procs::{Proc, free_port, wait_while_running};

const LIMIT: Duration = Duration::from_secs(180);

/// Synthetic data over `sites` sites and a gossip plan over `graph`, two
/// averaging steps a round.
fn setup(s: &Scratch, sites: usize, graph: &str, rounds: u32) -> (PathBuf, PathBuf) {
    util::synthetic(
        s,
        sites,
        rounds,
        &format!("kind = \"gossip\"\ngraph = \"{graph}\"\ngossip_steps = 2"),
    )
}

/// One `tessera peer` per site, each told every other site's address.
fn peers(
    s: &Scratch,
    plan: &Path,
    data: &Path,
    n: usize,
    extra: impl Fn(usize) -> Vec<String>,
) -> Vec<Proc> {
    peer_args(plan, data, n, extra)
        .iter()
        .enumerate()
        .map(|(i, args)| start_peer(s, i, args))
        .collect()
}

/// Starts `tessera peer` for site `i` with `args` (from [`peer_args`]).
fn start_peer(s: &Scratch, i: usize, args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(&format!("site{i}"), &s.dir, &args, None)
}

/// The arguments of each site's `tessera peer` (liveness 2 s unless `extra`
/// says otherwise).
fn peer_args(
    plan: &Path,
    data: &Path,
    n: usize,
    extra: impl Fn(usize) -> Vec<String>,
) -> Vec<Vec<String>> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let scheme = if extra(0).iter().any(|a| a == "--tls") {
        "https"
    } else {
        "http"
    };
    (0..n)
        .map(|i| {
            let site = format!("site{i}");
            let listen = format!("127.0.0.1:{}", ports[i]);
            let mut args: Vec<String> = [
                "peer",
                "--plan",
                plan.to_str().unwrap(),
                "--site",
                &site,
                "--data",
                data.to_str().unwrap(),
                "--listen",
                &listen,
                "--report",
                &format!("{site}.json"),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            for (j, port) in ports.iter().enumerate().filter(|(j, _)| *j != i) {
                args.push("--peer".into());
                args.push(format!("site{j}={scheme}://127.0.0.1:{port}"));
            }
            let extra = extra(i);
            if !extra.iter().any(|a| a == "--tls") {
                args.push("--insecure".into());
            }
            if !extra.iter().any(|a| a == "--give-up-after") {
                args.extend(["--give-up-after".into(), "60".into()]);
            }
            if !extra.iter().any(|a| a == "--liveness") {
                args.extend(["--liveness".into(), "2".into()]);
            }
            args.extend(extra);
            args
        })
        .collect()
}

fn simulated(s: &Scratch, plan: &Path) -> serde_json::Value {
    s.simulate(plan, "sim.model").0
}

#[test]
fn gossip_over_grpc_gives_every_site_the_simulated_model() {
    if util::skip_e2e("gossip_over_grpc_gives_every_site_the_simulated_model") {
        return;
    }
    let s = Scratch::new("gossip-equal");
    let (plan, data) = setup(&s, 6, "ring", 6);
    let sim = simulated(&s, &plan);
    let mut procs = peers(&s, &plan, &data, 6, |_| Vec::new());
    for p in &mut procs {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
    for i in 0..6 {
        let site = format!("site{i}");
        let report = s.json(&format!("{site}.json"));
        // Accuracy and log loss of the site's own model on its own test rows:
        // the loss to the last bit only if the models are the same bits.
        assert_eq!(
            report["final"]["per_site"][&site], sim["final"]["per_site"][&site],
            "{site}"
        );
        assert_eq!(report["rounds"].as_array().unwrap().len(), 6);
        let topology = &report["topology"];
        assert_eq!(
            topology["neighbours"][&site],
            sim["topology"]["neighbours"][&site]
        );
        assert!(report["communication"]["bytes_up"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_peer_killed_midway_is_lost_by_its_neighbours_and_the_rest_finish() {
    if util::skip_e2e("a_peer_killed_midway_is_lost_by_its_neighbours_and_the_rest_finish") {
        return;
    }
    let s = Scratch::new("gossip-kill");
    let (plan, data) = setup(&s, 6, "ring", 12);
    let mut procs = peers(&s, &plan, &data, 6, |_| {
        vec!["--pause-each-round".into(), "0.2".into()]
    });
    wait_while_running(LIMIT, "site2's fourth round", &mut procs, |p| {
        p[2].log().matches("round done").count() >= 4
    });
    procs[2].kill_9();
    for (i, p) in procs.iter_mut().enumerate().filter(|(i, _)| *i != 2) {
        assert!(p.wait(LIMIT).success(), "site{i}:\n{}", p.log());
    }
    for i in [0, 1, 3, 4, 5] {
        let site = format!("site{i}");
        let report = s.json(&format!("{site}.json"));
        assert_eq!(report["rounds"].as_array().unwrap().len(), 12, "{site}");
        // (Left out of the report when empty.)
        let lost = report["topology"]["lost"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        // On the ring, site2's neighbours are site1 and site3.
        if i == 1 || i == 3 {
            let round = lost["site2"].as_u64().unwrap();
            assert!((4..=6).contains(&round), "{site} lost site2 at {round}");
        } else {
            assert!(lost.is_empty(), "{site}: {lost:?}");
        }
    }
}

/// A peer killed with SIGKILL and started again a second later (the same
/// command) rejoins: its neighbours stop waiting for it, take it back and
/// say so; every peer finishes the run, the restarted one from the round it
/// rejoined at, with the model it adopted and averaged on; no peer's round
/// lasts much beyond the liveness period.
#[test]
fn a_peer_restarted_after_a_crash_rejoins_and_the_others_wait_at_most_the_liveness_period() {
    if util::skip_e2e(
        "a_peer_restarted_after_a_crash_rejoins_and_the_others_wait_at_most_the_liveness_period",
    ) {
        return;
    }
    const LIVENESS: f64 = 5.0;
    const ROUNDS: u64 = 12;
    let s = Scratch::new("gossip-rejoin");
    let (plan, data) = setup(&s, 6, "ring", ROUNDS as u32);
    let args = peer_args(&plan, &data, 6, |i| {
        [
            "--pause-each-round",
            "0.2",
            "--liveness",
            &LIVENESS.to_string(),
            "--model-out",
            &format!("site{i}.model"),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    });
    let mut procs: Vec<Proc> = (0..6).map(|i| start_peer(&s, i, &args[i])).collect();
    wait_while_running(LIMIT, "site2's fourth round", &mut procs, |p| {
        p[2].log().matches("round done").count() >= 4
    });
    procs[2].kill_9();
    std::thread::sleep(Duration::from_secs(1));
    procs[2] = start_peer(&s, 2, &args[2]);
    for (i, p) in procs.iter_mut().enumerate() {
        assert!(p.wait(LIMIT).success(), "site{i}:\n{}", p.log());
    }
    // The restarted peer: from the round it rejoined at, with a model.
    let report = s.json("site2.json");
    let rejoined = report["topology"]["rejoined"]["site2"]
        .as_u64()
        .unwrap_or_else(|| panic!("site2 says it rejoined: {}", report["topology"]));
    println!("site2 rejoined at round {rejoined}");
    assert!((5..=ROUNDS).contains(&rejoined), "rejoined at {rejoined}");
    assert_eq!(
        report["rounds"].as_array().unwrap().len() as u64,
        ROUNDS - rejoined + 1
    );
    assert!(report["final"]["accuracy"].as_f64().unwrap() > 0.0);
    // Its model is a self-describing file, as a participant's is.
    let inspected = s.run(&["model", "inspect", "site2.model"]).ok();
    assert!(inspected.contains("written by peer site2"), "{inspected}");
    let log = procs[2].log();
    assert!(
        log.contains(&format!("rejoined at round {rejoined}")),
        "site2 says where it rejoined:\n{log}"
    );
    for i in [0, 1, 3, 4, 5] {
        let site = format!("site{i}");
        let report = s.json(&format!("{site}.json"));
        let rounds = report["rounds"].as_array().unwrap();
        assert_eq!(rounds.len() as u64, ROUNDS, "{site}");
        // The stall: the longest round, restart included.
        let longest = rounds
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap())
            .fold(0.0, f64::max);
        println!("{site}: longest round {longest:.1} s");
        assert!(
            longest < LIVENESS + 10.0,
            "{site} waited {longest:.1} s in a round (liveness {LIVENESS} s)"
        );
        let topology = &report["topology"];
        if i == 1 || i == 3 {
            // Its neighbours took it back from the round they told it (the
            // restarted peer started at the earliest) and logged it.
            let back = topology["rejoined"]["site2"].as_u64();
            println!(
                "{site} took site2 back at {back:?}, lost it at {}",
                topology["lost"]
            );
            assert!(
                back.is_some_and(|r| (rejoined..=rejoined + 2).contains(&r)),
                "{site} took site2 back at {back:?} (site2 rejoined at {rejoined})"
            );
            let log = procs[i].log();
            assert!(
                log.contains("neighbour restarted") && log.contains("taken back"),
                "{site} logs the restart:\n{log}"
            );
        } else {
            assert!(topology.get("rejoined").is_none(), "{site}: {topology}");
            assert!(topology.get("lost").is_none(), "{site}: {topology}");
        }
    }
}

#[test]
fn peers_authenticate_each_other_with_the_federation_ca_and_refuse_an_impostor_and_a_revoked_site()
{
    let s = Scratch::new("gossip-tls");
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir", "ca"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["init"]);
    for site in ["site0", "site1", "site2"] {
        ca(&["issue", "--site", site]);
    }
    let (plan, data) = setup(&s, 3, "complete", 3);
    let sim = simulated(&s, &plan);
    let tls = |site: &str| s.path(&format!("ca/sites/{site}"));
    let mut procs = peers(&s, &plan, &data, 3, |i| {
        vec![
            "--tls".into(),
            tls(&format!("site{i}")).display().to_string(),
        ]
    });
    for p in &mut procs {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
    }
    for i in 0..3 {
        let site = format!("site{i}");
        let report = s.json(&format!("{site}.json"));
        assert_eq!(
            report["final"]["per_site"][&site], sim["final"]["per_site"][&site],
            "{site}"
        );
    }
    // site2 started with site1's certificate: the others refuse it.
    let mut procs = peers(&s, &plan, &data, 3, |i| {
        let own = if i == 2 { 1 } else { i };
        vec![
            "--tls".into(),
            tls(&format!("site{own}")).display().to_string(),
            "--give-up-after".into(),
            "5".into(),
        ]
    });
    let status = procs[2].wait(LIMIT);
    assert!(!status.success());
    let log = procs[2].log();
    assert!(
        log.contains("does not name site 'site2'"),
        "the impostor is told why:\n{log}"
    );
    for p in &mut procs[..2] {
        p.kill_9();
    }
    // site2's certificate is revoked: the list reaches every site's folder
    // and no peer talks to site2, whichever side calls; the run cannot start
    // (the agreement needs every site of the directory).
    ca(&["revoke", "site2"]);
    let list = std::fs::read(s.path("ca/crl.pem")).unwrap();
    for i in 0..3 {
        assert_eq!(
            std::fs::read(tls(&format!("site{i}")).join("crl.pem")).unwrap(),
            list
        );
    }
    let mut procs = peers(&s, &plan, &data, 3, |i| {
        vec![
            "--tls".into(),
            tls(&format!("site{i}")).display().to_string(),
            "--give-up-after".into(),
            "3".into(),
        ]
    });
    for p in &mut procs {
        assert!(
            !p.wait(LIMIT).success(),
            "{} must stop:\n{}",
            p.name,
            p.log()
        );
    }
    for p in &procs[..2] {
        let log = p.log();
        assert!(
            log.contains("'site2'") && log.contains("Revoked"),
            "{} says why:\n{log}",
            p.name
        );
    }
    assert!(procs[2].log().contains("Revoked"), "{}", procs[2].log());
}

/// A peer's certificate revoked midway: its neighbours stop trusting it on
/// the connections already open (a call from it is refused; a model fetched
/// from it over a connection opened before the revocation is not used), lose
/// it, and finish the run without it; the revoked peer is told why.
#[test]
fn a_peer_revoked_midway_is_lost_by_the_others_who_finish() {
    if util::skip_e2e("a_peer_revoked_midway_is_lost_by_the_others_who_finish") {
        return;
    }
    let s = Scratch::new("gossip-revoke");
    let ca = |args: &[&str]| {
        let mut all = vec!["ca", "--dir", "ca"];
        all.extend_from_slice(args);
        s.run(&all).ok();
    };
    ca(&["init"]);
    for i in 0..4 {
        ca(&["issue", "--site", &format!("site{i}")]);
    }
    let (plan, data) = setup(&s, 4, "complete", 12);
    let mut procs = peers(&s, &plan, &data, 4, |i| {
        vec![
            "--tls".into(),
            s.path(&format!("ca/sites/site{i}")).display().to_string(),
            "--pause-each-round".into(),
            "0.2".into(),
        ]
    });
    wait_while_running(LIMIT, "site3's third round", &mut procs, |p| {
        p[3].log().matches("round done").count() >= 3
    });
    ca(&["revoke", "site3"]);
    let status = procs[3].wait(LIMIT);
    assert!(!status.success(), "site3 must stop:\n{}", procs[3].log());
    assert!(
        procs[3].log().contains("Revoked"),
        "site3 is told why:\n{}",
        procs[3].log()
    );
    for (i, p) in procs.iter_mut().enumerate().take(3) {
        assert!(p.wait(LIMIT).success(), "site{i}:\n{}", p.log());
        println!(
            "site{i}: {}",
            p.log()
                .lines()
                .filter(|l| l.contains("site3") && l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for i in 0..3 {
        let site = format!("site{i}");
        let report = s.json(&format!("{site}.json"));
        assert_eq!(report["rounds"].as_array().unwrap().len(), 12, "{site}");
        let lost = report["topology"]["lost"]["site3"].as_u64();
        assert!(
            lost.is_some_and(|r| (4..=12).contains(&r)),
            "{site} lost site3 after its revocation: {lost:?}"
        );
    }
}

/// Fine-tuning on gossip: after the last round each peer fine-tunes its own
/// final model on its own rows, per department too, and its report's
/// `personalization` section is the gossip simulation's for that site, bit
/// for bit; its printed line has the fine-tuned model's accuracy.
#[test]
fn each_peer_fine_tunes_its_own_model_as_the_simulation_does() {
    if util::skip_e2e("each_peer_fine_tunes_its_own_model_as_the_simulation_does") {
        return;
    }
    let s = Scratch::new("gossip-finetune");
    let (plan, data) = setup(&s, 4, "ring", 3);
    // The same rows, each in one of three departments.
    s.run(&[
        "synth",
        "--sites",
        "4",
        "--rows",
        "150",
        "--features",
        "20",
        "--classes",
        "10",
        "--alpha",
        "0.5",
        "--beta",
        "0.5",
        "--seed",
        "3",
        "--departments",
        "3",
        "--out",
        "syn.csv",
    ])
    .ok();
    let text = std::fs::read_to_string(&plan).unwrap()
        + "\n[personalization]\nfinetune_epochs = 1\ndepartment = \"department\"\n";
    let plan = s.write("plan.toml", &text);
    let sim = simulated(&s, &plan);
    let simulated = &sim["personalization"];
    assert_eq!(simulated["sites"], 4, "{simulated}");
    let mut procs = peers(&s, &plan, &data, 4, |_| Vec::new());
    for p in &mut procs {
        assert!(p.wait(LIMIT).success(), "{}:\n{}", p.name, p.log());
        assert!(p.log().contains("fine-tuned: 0."), "{}", p.log());
    }
    for i in 0..4 {
        let site = format!("site{i}");
        let report = s.json(&format!("{site}.json"));
        let own = &report["personalization"]["per_site"][&site];
        assert_eq!(*own, simulated["per_site"][&site], "{site}");
        assert_eq!(own["departments"].as_object().unwrap().len(), 3, "{own}");
    }
}
