//! What a fit task tells a participant, in process: the strategy's
//! instructions reach the header in synchronous and asynchronous runs alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, SITES, agree, examples};
use tessera_aggregate::Instructions;
use tessera_coordinator::TaskView;
use tessera_engine::Plan;
use tessera_proto::convert;

/// The heart plan with FedProx (its mu, 0.01, made 0.25) in `mode`.
fn fedprox(mode: &str) -> (Plan, String) {
    let text = std::fs::read_to_string(examples().join("fed-heart-disease.toml"))
        .unwrap()
        .replace(
            "strategy = \"fedavg\"\n",
            &format!("strategy = \"fedprox\"\nmode = \"{mode}\"\n"),
        )
        .replace("mu = 0.01\n", "mu = 0.25\n")
        + "\n[privacy]\nsite_metrics = \"clear\"\n";
    (Plan::from_toml(&text, "tasks").unwrap(), text)
}

#[test]
fn fedprox_instructions_reach_synchronous_and_asynchronous_tasks() {
    for mode in ["sync", "async"] {
        let db = Db::new();
        let mut f = db.open(&fedprox(mode));
        agree(&mut f);
        let Ok(TaskView::Fit {
            header, tensors, ..
        }) = f.task_for(&SITES[0].name, None)
        else {
            panic!("{mode}: no fit task");
        };
        let instructions = convert::instructions_from_pb(&header, None).unwrap();
        assert_eq!(instructions, Instructions::Proximal { mu: 0.25 }, "{mode}");
        assert_eq!(
            header.proximal_mu,
            Some(0.25),
            "{mode}: 1.6 peers read it too"
        );
        assert!(tensors.is_none(), "{mode}");
    }
}
