//! Multi-task federated learning as a strategy pair: sites with different
//! targets over the same features share the model's body (every layer but
//! the last), and each task has its own head (the last layer), trained only
//! by the sites of that task.
//!
//! The federation's model stacks them ([`Multitask::stack`]: `body/NAME`,
//! then `t0/NAME`, ..., `t{k-1}/NAME` for the heads, then
//! `multitask/shares`, the share of the last round's examples each task
//! took). A site's update has the same layout: its body change, its own
//! head's change, zeros for the other heads, and a one in its task's share.
//! The weighted mean of such updates, which the round engine forms in every
//! runtime, holds the body's mean change over every site, each head's
//! `Σ w Δ / W` over its task's sites and each task's share `W_t / W`; their
//! quotient is the task's mean head change. The heads' shapes differ where
//! the tasks' classes differ; the body is one.

use tessera_core::{LocalModel, ParameterSet, ParticipantId, Tensor};

use crate::local::{LocalAlgorithm, LocalFit, mismatch, put, restore_choice, save_choice, take};
use crate::methods::head_mask;
use crate::methods::ifca::move_by_shares;
use crate::{AggregateError, Attendance, Instructions, RoundAggregate, Strategy};

/// The stacked model's last tensor: each task's share of the last round's
/// examples.
pub const TASK_SHARES: &str = "multitask/shares";

/// Most tasks a stacked model holds.
pub const MAX_TASKS: usize = 16;

/// Multi-task's server part: the body moves by every site's mean change,
/// each head by its task's sites' mean change.
#[derive(Debug, Clone)]
pub struct Multitask {
    /// Each task's participants, in the plan's task order.
    pub tasks: Vec<Vec<String>>,
    /// Server learning rate (the body's and each head's).
    pub server_lr: f32,
}

/// The body and the heads of a stacked model, with the tasks' shares.
#[derive(Debug, Clone)]
pub struct Unstacked {
    /// The shared body, its tensors under the model's own names.
    pub body: ParameterSet,
    /// Each task's head, under the model's own names.
    pub heads: Vec<ParameterSet>,
    /// Each task's share of the last round's examples.
    pub shares: Vec<f32>,
}

fn config(why: String) -> AggregateError {
    AggregateError::Config(format!("multitask: {why}"))
}

impl Multitask {
    /// A model of the plan's layout split into its body and its head (the
    /// last layer), each under the model's own names.
    pub fn split(model: &ParameterSet) -> Result<(ParameterSet, ParameterSet), AggregateError> {
        let mask = head_mask(model, 1)?;
        let (mut body, mut head) = (ParameterSet::new(), ParameterSet::new());
        for ((name, tensor), is_head) in model.iter().zip(mask) {
            let part = if is_head { &mut head } else { &mut body };
            part.push(name, tensor.clone())?;
        }
        Ok((body, head))
    }

    /// The body, the heads (one per task) and the shares as the
    /// federation's one model.
    pub fn stack(
        body: &ParameterSet,
        heads: &[ParameterSet],
        shares: &[f32],
    ) -> Result<ParameterSet, AggregateError> {
        if heads.len() != shares.len() || !(2..=MAX_TASKS).contains(&heads.len()) {
            return Err(config(format!(
                "{} heads with {} shares (2 to {MAX_TASKS} tasks)",
                heads.len(),
                shares.len()
            )));
        }
        let mut stacked = ParameterSet::new();
        put(&mut stacked, "body", body)?;
        for (t, head) in heads.iter().enumerate() {
            if head.names() != heads[0].names() {
                return Err(config(format!("task {t}'s head names other tensors")));
            }
            put(&mut stacked, &format!("t{t}"), head)?;
        }
        stacked.push(
            TASK_SHARES,
            Tensor::new(vec![shares.len()], shares.to_vec())?,
        )?;
        Ok(stacked)
    }

    /// The body, heads and shares of a stacked model of `k` tasks; refused,
    /// naming what is wrong, for any other layout.
    pub fn unstack(stacked: &ParameterSet, k: usize) -> Result<Unstacked, AggregateError> {
        let shares = stacked
            .get(TASK_SHARES)
            .filter(|t| t.len() == k)
            .ok_or_else(|| {
                config(format!(
                    "the model is not {k} tasks' stacked heads (no '{TASK_SHARES}' of {k} values)"
                ))
            })?;
        let body = take(stacked, "body")?;
        let heads: Vec<ParameterSet> = (0..k)
            .map(|t| take(stacked, &format!("t{t}")))
            .collect::<Result<_, _>>()?;
        let per = heads.first().map_or(0, ParameterSet::n_tensors);
        if heads.iter().any(|h| h.names() != heads[0].names())
            || body.n_tensors() + k * per + 1 != stacked.n_tensors()
        {
            return Err(config(format!(
                "{} tensors do not stack a body and {k} heads alike",
                stacked.n_tensors()
            )));
        }
        Ok(Unstacked {
            body,
            heads,
            shares: shares.data().to_vec(),
        })
    }

    /// The model of task `t`: the body and its head, in the model's order.
    pub fn task_model(
        stacked: &ParameterSet,
        k: usize,
        t: usize,
    ) -> Result<ParameterSet, AggregateError> {
        let Unstacked { body, heads, .. } = Self::unstack(stacked, k)?;
        let head = heads
            .get(t)
            .ok_or_else(|| config(format!("task {t} of {k}")))?;
        let mut model = body;
        for (name, tensor) in head.iter() {
            model.push(name, tensor.clone())?;
        }
        Ok(model)
    }

    /// The task of `site`, by index.
    pub fn task_of(&self, site: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.iter().any(|s| s == site))
    }
}

impl Strategy for Multitask {
    fn name(&self) -> &'static str {
        "multitask"
    }

    /// The number of tasks and the site's own; a site in no task is given
    /// the number of tasks as its task, which it refuses.
    fn configure_fit(&self, _global: &ParameterSet, site: &ParticipantId) -> Instructions {
        let tasks = self.tasks.len() as u32;
        Instructions::Multitask {
            tasks,
            task: self.task_of(site.as_str()).map_or(tasks, |t| t as u32),
        }
    }

    /// A site's update must be its own task's: its shares one 1 (in its
    /// task's place) and zeros, every other task's head unchanged (a site
    /// that steered another task's head is refused, saying so).
    fn check_update(
        &self,
        from: &ParticipantId,
        update: &tessera_core::Update,
    ) -> Result<(), AggregateError> {
        let k = self.tasks.len();
        let Unstacked { heads, shares, .. } = Self::unstack(&update.delta, k)?;
        let ones: Vec<usize> = (0..k).filter(|&t| shares[t] == 1.0).collect();
        let [own] = ones[..] else {
            return Err(config(format!(
                "an update's shares must be one 1 and zeros, got {shares:?}"
            )));
        };
        match self.task_of(from.as_str()) {
            Some(site_task) if site_task == own => {}
            Some(site_task) => {
                return Err(config(format!(
                    "site '{from}' of task {site_task} sent an update for task {own}"
                )));
            }
            None => return Err(config(format!("site '{from}' is in none of the tasks"))),
        }
        for (t, (head, &share)) in heads.iter().zip(&shares).enumerate() {
            if t != own && (share != 0.0 || head.values().any(|v| v != 0.0)) {
                return Err(config(format!(
                    "an update for task {own} changes task {t}'s head too"
                )));
            }
        }
        Ok(())
    }

    /// The body moves by `server_lr` times the round's mean body change;
    /// each head by `server_lr` times its slice of the mean change over
    /// its task's share (its sites' weighted mean change); a head of no
    /// share stays. A task's weight, its share times the round's, is a
    /// whole number of examples, rounded to one before it divides, and the
    /// tasks' weights add up to the round's. The shares become the round's.
    fn aggregate_fit(
        &mut self,
        global: &ParameterSet,
        round: &RoundAggregate,
        _attendance: &Attendance,
    ) -> Result<ParameterSet, AggregateError> {
        let k = self.tasks.len();
        let Unstacked {
            mut body,
            mut heads,
            ..
        } = Self::unstack(global, k)?;
        let change = Self::unstack(&round.mean_delta, k)?;
        body.add_scaled(&change.body, self.server_lr)?;
        let taken = move_by_shares(
            ("multitask", "task"),
            (&mut heads, &change.heads),
            &change.shares,
            round.weight_sum,
            self.server_lr,
        )?;
        let next = Self::stack(&body, &heads, &taken)?;
        next.check_finite()?;
        Ok(next)
    }
}

/// Multi-task's local part: the site trains its task's model (the body and
/// its head) and sends the stacked change.
#[derive(Debug, Clone, Default)]
pub struct MultitaskLocal {
    /// The site's task, of how many.
    task: Option<(usize, usize)>,
}

impl MultitaskLocal {
    /// A local part that knows its task before its first training (a site
    /// evaluates its task's model from the start).
    pub fn of_task(task: usize, tasks: usize) -> Self {
        Self {
            task: Some((task, tasks)),
        }
    }
}

impl LocalAlgorithm for MultitaskLocal {
    /// Trains the body and the site's head, and returns the stacked change:
    /// the body's and the head's, zeros for the other heads, a one in the
    /// task's share.
    fn fit(
        &mut self,
        instructions: &Instructions,
        global: &ParameterSet,
        model: &mut dyn LocalModel,
    ) -> Result<LocalFit, AggregateError> {
        let Instructions::Multitask { tasks, task } = instructions else {
            return Err(mismatch("multitask", instructions));
        };
        let (k, t) = (*tasks as usize, *task as usize);
        if t >= k {
            return Err(config(format!(
                "the task asks this site to train task {t} of {k}: it is in none of the plan's tasks"
            )));
        }
        if let Some((own, _)) = self.task
            && own != t
        {
            return Err(config(format!(
                "the task asks this site to train task {t}, and its task is {own}"
            )));
        }
        let start = Multitask::task_model(global, k, t)?;
        model.set_parameters(&start)?;
        let stats = model.train(None)?;
        let change = model.parameters().sub(&start)?;
        change.check_finite()?;
        let (body, head) = Multitask::split(&change)?;
        let unstacked = Multitask::unstack(global, k)?;
        let heads: Vec<ParameterSet> = unstacked
            .heads
            .iter()
            .enumerate()
            .map(|(j, h)| if j == t { head.clone() } else { h.zeros_like() })
            .collect();
        let shares: Vec<f32> = (0..k).map(|j| f32::from(u8::from(j == t))).collect();
        self.task = Some((t, k));
        Ok(LocalFit {
            delta: Multitask::stack(&body, &heads, &shares)?,
            aux: None,
            stats,
        })
    }

    /// The site's task's model, as `global` has it.
    fn personal(&self, global: &ParameterSet) -> Option<ParameterSet> {
        let (t, k) = self.task?;
        Multitask::task_model(global, k, t).ok()
    }

    /// The task and the number of tasks, as two values.
    fn saved(&self) -> Option<ParameterSet> {
        let (t, k) = self.task?;
        save_choice("multitask/task", t, k)
    }

    /// Refused unless the saved state is a task below a number of tasks
    /// from 2 to [`MAX_TASKS`].
    fn restore(&mut self, saved: &ParameterSet) -> Result<(), AggregateError> {
        self.task = Some(
            restore_choice(saved, "multitask/task", MAX_TASKS).ok_or_else(|| {
                config(format!(
                    "the saved state has no task below a number of tasks from 2 to {MAX_TASKS}"
                ))
            })?,
        );
        Ok(())
    }
}

#[cfg(test)]
#[path = "multitask_tests.rs"]
mod tests;
