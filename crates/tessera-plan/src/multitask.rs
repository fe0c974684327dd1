//! `[multitask]`: sites with different prediction tasks over the same
//! features. Each task names its target column and its sites; the model's
//! body (every layer but the last) is shared by all sites, each task has
//! its own head (the last layer), trained only by the sites of that task.

use serde::{Deserialize, Serialize};
use tessera_data::{ColumnKind, ColumnSpec, DataConfig};

/// Most tasks a plan declares.
pub const MAX_TASKS: usize = 16;

/// The tasks of a multi-task plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultitaskConfig {
    /// Two or more tasks (`[[multitask.tasks]]`).
    pub tasks: Vec<TaskSpec>,
}

/// One task: what its sites predict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The task's name (letters, digits, `-`, `_`, `.`), as the report
    /// names it.
    pub name: String,
    /// The column this task predicts. Every task's target is left out of
    /// the features of every task, so all tasks see the same features.
    pub target: String,
    /// The task's kind: `"binary"` (two classes: its target's two values,
    /// or those named `positive` or `negative` against the rest) or
    /// `"multiclass"` (every value of its target a class). Optional: a task
    /// that names none takes what its target holds; one that names it is
    /// refused where its sites' classes are not of that kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKind>,
    /// Target values counted as the positive class (binary tasks), as
    /// `[data.schema] positive`.
    #[serde(default)]
    pub positive: Vec<String>,
    /// Target values counted as the negative class; every other value is
    /// positive (as `[data.schema] negative`).
    #[serde(default)]
    pub negative: Vec<String>,
    /// The sites that have this task's labels and train its head. Every
    /// site of the data belongs to at least one task; a site in several
    /// trains each task's model on that task's rows (in simulation: a
    /// deployed site trains one task, and a coordinator refuses a site in
    /// several).
    pub sites: Vec<String>,
}

/// What a task predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Two classes.
    Binary,
    /// More than two classes.
    Multiclass,
}

impl TaskSpec {
    /// Refuses `classes`, as the data agreement or reading gave them, where
    /// they are not of the task's declared kind.
    pub fn check_classes(&self, classes: &[String]) -> Result<(), String> {
        let bad = match self.kind {
            Some(TaskKind::Binary) => classes.len() != 2,
            Some(TaskKind::Multiclass) => classes.len() < 3,
            None => false,
        };
        if !bad {
            return Ok(());
        }
        let how = match self.kind {
            Some(TaskKind::Binary) => "name its `positive` or `negative` values",
            _ => "declare it `kind = \"binary\"`",
        };
        Err(format!(
            "multitask task '{}' is declared {}, and its target '{}' has {} classes at its \
             sites ({}): {how}",
            self.name,
            match self.kind {
                Some(TaskKind::Binary) => "binary",
                _ => "multiclass",
            },
            self.target,
            classes.len(),
            classes.join(", ")
        ))
    }
}

impl MultitaskConfig {
    /// What is wrong with the tasks on their own, one line each.
    pub fn problems(&self, schema_target: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let n = self.tasks.len();
        if !(2..=MAX_TASKS).contains(&n) {
            problems.push(format!(
                "multitask needs 2 to {MAX_TASKS} tasks ([[multitask.tasks]]), got {n}"
            ));
        }
        // Task names become file names: compared without case.
        let mut names = std::collections::BTreeSet::new();
        let mut targets = std::collections::BTreeSet::new();
        for task in &self.tasks {
            let fine = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if task.name.is_empty() || task.name.len() > 64 || !task.name.chars().all(fine) {
                problems.push(format!(
                    "multitask task name '{}' must be 1 to 64 letters, digits, '-', '_' or '.'",
                    task.name.escape_debug()
                ));
            } else if !names.insert(task.name.to_ascii_lowercase()) {
                problems.push(format!("multitask names task '{}' twice", task.name));
            }
            if task.target.trim().is_empty() {
                problems.push(format!("multitask task '{}' names no target", task.name));
            } else if !targets.insert(task.target.as_str()) {
                problems.push(format!(
                    "multitask tasks share the target '{}': each task predicts its own column",
                    task.target
                ));
            }
            if task.sites.is_empty() {
                problems.push(format!("multitask task '{}' names no sites", task.name));
            }
            if task.kind == Some(TaskKind::Multiclass)
                && (!task.positive.is_empty() || !task.negative.is_empty())
            {
                problems.push(format!(
                    "multitask task '{}' is declared multiclass, and its `positive` or \
                     `negative` values make it binary",
                    task.name
                ));
            }
            for (k, site) in task.sites.iter().enumerate() {
                if task.sites[..k].contains(site) {
                    problems.push(format!(
                        "multitask task '{}' names site '{site}' twice",
                        task.name
                    ));
                }
            }
        }
        if n > 0 && !targets.contains(schema_target) {
            problems.push(format!(
                "data.schema.target = '{schema_target}' is none of the tasks' targets; name \
                 one of them ({})",
                self.tasks
                    .iter()
                    .map(|t| t.target.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        problems
    }

    /// The first site named in two tasks, with the first two tasks that
    /// name it (`None` where every site has one task).
    pub fn site_in_two_tasks(&self) -> Option<(&str, &TaskSpec, &TaskSpec)> {
        self.tasks.iter().enumerate().find_map(|(t, task)| {
            task.sites.iter().find_map(|site| {
                self.tasks[..t]
                    .iter()
                    .find(|o| o.sites.contains(site))
                    .map(|other| (site.as_str(), other, task))
            })
        })
    }

    /// The first task of `site`, by index.
    pub fn task_of(&self, site: &str) -> Option<usize> {
        self.tasks
            .iter()
            .position(|t| t.sites.iter().any(|s| s == site))
    }

    /// How task `t` reads `data` (`None` past the last task): the task's
    /// target (with its positive or negative values) replaces the
    /// schema's, and every task's target is left out of the features, so
    /// that every task reads the same features and a site need not have
    /// the other tasks' columns filled. The sites are left as `data` lists
    /// them.
    pub fn task_data(&self, data: &DataConfig, t: usize) -> Option<DataConfig> {
        let task = self.tasks.get(t)?;
        let schema = &data.schema;
        let mut config = data.clone();
        config.schema.target = task.target.clone();
        // The task of the schema's target takes the schema's classes unless
        // it gives its own.
        if task.target != schema.target || !task.positive.is_empty() || !task.negative.is_empty() {
            config.schema.positive = task.positive.clone();
            config.schema.negative = task.negative.clone();
        }
        for other in &self.tasks {
            let kind = if other.target == task.target {
                ColumnKind::Categorical
            } else {
                ColumnKind::Ignore
            };
            match config
                .schema
                .columns
                .iter_mut()
                .find(|c| c.name == other.target)
            {
                Some(spec) => {
                    spec.kind = kind;
                    spec.levels = None;
                    spec.drop_first = false;
                    // A target, not a feature: bounds apply to features.
                    (spec.min, spec.max) = (None, None);
                }
                // With a header, a column left unlisted is a feature: an
                // other task's target must be named to be left out.
                None if config.schema.header && kind == ColumnKind::Ignore => {
                    config.schema.columns.push(ColumnSpec {
                        name: other.target.clone(),
                        kind,
                        levels: None,
                        drop_first: false,
                        min: None,
                        max: None,
                    });
                }
                None => {}
            }
        }
        Some(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, target: &str, sites: &[&str]) -> TaskSpec {
        TaskSpec {
            kind: None,
            name: name.into(),
            target: target.into(),
            positive: Vec::new(),
            negative: Vec::new(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tasks_that_cannot_work_are_named() {
        let good = MultitaskConfig {
            tasks: vec![task("a", "y", &["s1"]), task("b", "z", &["s2", "s3"])],
        };
        assert!(good.problems("y").is_empty());
        assert_eq!(good.task_of("s3"), Some(1));
        assert_eq!(good.task_of("s4"), None);
        let why = good.problems("w").join("\n");
        assert!(why.contains("none of the tasks' targets"), "{why}");
        let bad = MultitaskConfig {
            tasks: vec![task("a", "y", &["s1"]), task("a/b", "y", &["s1"])],
        };
        let why = bad.problems("y").join("\n");
        assert!(why.contains("'a/b' must be"), "{why}");
        assert!(why.contains("share the target 'y'"), "{why}");
        // A site with both tasks' labels is in both.
        assert!(!why.contains("'s1'"), "{why}");
        let twice = MultitaskConfig {
            tasks: vec![
                task("Disease", "y", &["s1", "s1"]),
                task("disease", "z", &["s2"]),
            ],
        };
        let why = twice.problems("y").join("\n");
        assert!(why.contains("names site 's1' twice"), "{why}");
        assert!(why.contains("names task 'disease' twice"), "{why}");
        let one = MultitaskConfig {
            tasks: vec![task("a", "y", &[])],
        };
        let why = one.problems("y").join("\n");
        assert!(why.contains("2 to 16 tasks"), "{why}");
        assert!(why.contains("names no sites"), "{why}");
    }

    /// A declared kind is held to the classes the sites give, and a
    /// multiclass task may not name positive values.
    #[test]
    fn a_tasks_declared_kind_is_checked() {
        let mut t = task("grade", "num", &["s1"]);
        let classes = |n: usize| (0..n).map(|k| k.to_string()).collect::<Vec<_>>();
        assert!(t.check_classes(&classes(5)).is_ok());
        t.kind = Some(TaskKind::Binary);
        assert!(t.check_classes(&classes(2)).is_ok());
        let e = t.check_classes(&classes(5)).unwrap_err();
        assert!(e.contains("'grade' is declared binary"), "{e}");
        assert!(
            e.contains("has 5 classes at its sites (0, 1, 2, 3, 4)"),
            "{e}"
        );
        t.kind = Some(TaskKind::Multiclass);
        assert!(t.check_classes(&classes(3)).is_ok());
        assert!(t.check_classes(&classes(2)).is_err());
        t.negative = vec!["0".into()];
        let tasks = MultitaskConfig {
            tasks: vec![t, task("b", "z", &["s2"])],
        };
        let why = tasks.problems("num").join("\n");
        assert!(why.contains("'grade' is declared multiclass"), "{why}");
        let parsed: TaskSpec =
            toml::from_str("name = \"a\"\ntarget = \"y\"\nkind = \"binary\"\nsites = [\"s\"]")
                .unwrap();
        assert_eq!(parsed.kind, Some(TaskKind::Binary));
    }
}
