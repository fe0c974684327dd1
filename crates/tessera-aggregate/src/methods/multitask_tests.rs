#![allow(clippy::unwrap_used)]

use tessera_core::{FitStats, Tensor, Update};

use super::*;
use crate::methods::testing::Toward;
use crate::{Attendance, UpdateAccumulator};

/// A model of a body layer `l0` (two values) and a head layer `out` of
/// `classes` values.
fn model(body: [f32; 2], head: &[f32]) -> ParameterSet {
    let mut p = ParameterSet::new();
    p.push("l0.w", Tensor::new(vec![2], body.to_vec()).unwrap())
        .unwrap();
    p.push(
        "out.w",
        Tensor::new(vec![head.len()], head.to_vec()).unwrap(),
    )
    .unwrap();
    p
}

fn strategy() -> Multitask {
    Multitask {
        tasks: vec![vec!["a1".into(), "a2".into()], vec!["b1".into()]],
        server_lr: 1.0,
    }
}

/// Two tasks, the first binary and the second of three classes: the round
/// engine's weighted mean of the stacked updates moves the body by every
/// site's mean change and each head by its own sites' mean change, as
/// computed apart here; no site's update touches another task's head.
#[test]
fn the_body_moves_by_every_site_and_each_head_by_its_tasks_sites() {
    let body = model([0.0, 0.0], &[0.0, 0.0]);
    let (body, head_a) = Multitask::split(&body).unwrap();
    let head_b = model([0.0, 0.0], &[1.0, 1.0, 1.0]);
    let (_, head_b) = Multitask::split(&head_b).unwrap();
    let global = Multitask::stack(&body, &[head_a.clone(), head_b.clone()], &[0.0, 0.0]).unwrap();
    // (site, task, rows, target of body and head)
    let sites: [(&str, u32, u64, Vec<f32>); 3] = [
        ("a1", 0, 2, vec![4.0, 0.0, 2.0, -2.0]),
        ("a2", 0, 1, vec![0.0, 4.0, 8.0, 2.0]),
        ("b1", 1, 5, vec![-4.0, 4.0, 3.0, 5.0, 7.0]),
    ];
    let mut sum = UpdateAccumulator::new(&global, None);
    let s = strategy();
    for (site, task, rows, target) in &sites {
        let instructions = s.configure_fit(&global, &ParticipantId::new(*site));
        assert_eq!(
            instructions,
            Instructions::Multitask {
                tasks: 2,
                task: *task
            }
        );
        let mut local = MultitaskLocal::default();
        let start = Multitask::task_model(&global, 2, *task as usize).unwrap();
        let mut m = Toward {
            w: start.clone(),
            target: target.clone(),
        };
        let fit = local.fit(&instructions, &global, &mut m).unwrap();
        let parts = Multitask::unstack(&fit.delta, 2).unwrap();
        let other = 1 - *task as usize;
        assert!(parts.heads[other].values().all(|v| v == 0.0));
        assert_eq!(parts.shares[*task as usize], 1.0);
        assert_eq!(local.personal(&global).unwrap(), start);
        let update = Update {
            delta: fit.delta,
            n_examples: *rows,
            aux: None,
            stats: fit.stats,
        };
        s.check_update(&ParticipantId::new(*site), &update).unwrap();
        sum.add(&update, *rows as f64).unwrap();
    }
    let mut s = strategy();
    let next = s
        .aggregate_fit(&global, &sum.finish(3).unwrap(), &Attendance::default())
        .unwrap();
    let got = Multitask::unstack(&next, 2).unwrap();
    // Each site moves half way to its target from 0 (b1's head from 1).
    // Body: (2*(2,0) + 1*(0,2) + 5*(-2,2)) / 8 = (-6/8, 12/8).
    let close = |a: &ParameterSet, b: &[f32]| {
        let a: Vec<f32> = a.values().collect();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} against {b:?}");
        }
    };
    close(&got.body, &[-0.75, 1.5]);
    // Head a: (2*(1,-1) + 1*(4,1)) / 3 = (2, -1/3).
    close(&got.heads[0], &[2.0, -1.0 / 3.0]);
    // Head b: from 1 half way to (3, 5, 7): (2, 3, 4).
    close(&got.heads[1], &[2.0, 3.0, 4.0]);
    assert_eq!(got.shares, [3.0 / 8.0, 5.0 / 8.0]);
}

/// A site that sends another task's update, steers another head, or
/// spreads its share is refused by name; so is a site in no task.
#[test]
fn an_update_for_another_task_is_refused() {
    let (body, head) = Multitask::split(&model([0.0, 0.0], &[0.0, 0.0])).unwrap();
    let zero = head.zeros_like();
    let moved = head.with_values(&[1.0, 1.0]).unwrap();
    let update = |heads: [&ParameterSet; 2], shares: [f32; 2]| Update {
        delta: Multitask::stack(&body, &[heads[0].clone(), heads[1].clone()], &shares).unwrap(),
        n_examples: 1,
        aux: None,
        stats: FitStats::default(),
    };
    let s = strategy();
    let a1 = ParticipantId::new("a1");
    assert!(
        s.check_update(&a1, &update([&moved, &zero], [1.0, 0.0]))
            .is_ok()
    );
    let e = s
        .check_update(&a1, &update([&zero, &moved], [0.0, 1.0]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("site 'a1' of task 0 sent an update for task 1"),
        "{e}"
    );
    let e = s
        .check_update(&a1, &update([&moved, &moved], [1.0, 0.0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("changes task 1's head too"), "{e}");
    let e = s
        .check_update(&a1, &update([&moved, &zero], [0.5, 0.5]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("one 1 and zeros"), "{e}");
    let e = s
        .check_update(
            &ParticipantId::new("z"),
            &update([&moved, &zero], [1.0, 0.0]),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("'z' is in none of the tasks"), "{e}");
    // A plain model is not a stacked one.
    let e = s
        .check_update(
            &a1,
            &Update {
                delta: model([0.0, 0.0], &[0.0, 0.0]),
                n_examples: 1,
                aux: None,
                stats: FitStats::default(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("not 2 tasks' stacked heads"), "{e}");
}

/// A site told to train a task out of range, or another task than the one
/// it trained, refuses; its task survives a restart.
#[test]
fn a_site_refuses_a_task_not_its_own_and_keeps_its_task() {
    let (body, head) = Multitask::split(&model([0.0, 0.0], &[0.0, 0.0])).unwrap();
    let global = Multitask::stack(&body, &[head.clone(), head.clone()], &[0.0, 0.0]).unwrap();
    let mut m = Toward {
        w: model([0.0, 0.0], &[0.0, 0.0]),
        target: vec![1.0; 4],
    };
    let mut local = MultitaskLocal::of_task(0, 2);
    let e = local
        .fit(
            &Instructions::Multitask { tasks: 2, task: 2 },
            &global,
            &mut m,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("in none of the plan's tasks"), "{e}");
    let e = local
        .fit(
            &Instructions::Multitask { tasks: 2, task: 1 },
            &global,
            &mut m,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("train task 1, and its task is 0"), "{e}");
    let saved = local.saved().unwrap();
    let mut back = MultitaskLocal::default();
    back.restore(&saved).unwrap();
    assert_eq!(back.personal(&global), local.personal(&global));
    let mut bad = saved.clone();
    bad.values_mut().for_each(|v| *v = 7.0);
    assert!(MultitaskLocal::default().restore(&bad).is_err());
}
