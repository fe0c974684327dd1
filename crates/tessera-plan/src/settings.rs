//! `--set section.key=value`: any plan key changed on the TOML value before
//! it is read, so that every key a plan file has can be set, and a key or
//! value the plan does not take is refused naming the setting.

use crate::{Plan, PlanError};

/// One `section.key=value`, parsed.
struct Setting<'a> {
    /// As given, shortened for messages.
    shown: String,
    /// The key path.
    keys: Vec<&'a str>,
    /// The value as TOML (a bare word as a string); `None`: remove the key
    /// (`key=`), so that it takes its default.
    value: Option<toml::Value>,
}

fn invalid(message: String) -> PlanError {
    PlanError::Invalid(message)
}

impl<'a> Setting<'a> {
    fn parse(setting: &'a str) -> Result<Setting<'a>, PlanError> {
        let shown = tessera_core::shown(setting, 200);
        let Some((path, text)) = setting.split_once('=') else {
            return Err(invalid(format!("--set '{shown}': give section.key=value")));
        };
        let keys: Vec<&str> = path.trim().split('.').map(str::trim).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(invalid(format!(
                "--set '{shown}': the key path has an empty part"
            )));
        }
        let text = text.trim();
        let value = (!text.is_empty()).then(|| {
            toml::from_str::<toml::Table>(&format!("v = {text}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(text.to_string()))
        });
        Ok(Setting {
            shown: shown.to_string(),
            keys,
            value,
        })
    }

    /// Applies the setting to `value`, the plan as TOML.
    fn apply(&self, value: &mut toml::Value) -> Result<(), PlanError> {
        let mut at = value;
        for (i, key) in self.keys.iter().enumerate() {
            let table = at.as_table_mut().ok_or_else(|| {
                invalid(format!(
                    "--set '{}': '{}' is a value, not a section",
                    self.shown,
                    self.keys[..i].join(".")
                ))
            })?;
            if i + 1 == self.keys.len() {
                match &self.value {
                    Some(v) => {
                        table.insert(key.to_string(), v.clone());
                    }
                    None => {
                        table.remove(*key);
                    }
                }
                break;
            }
            at = table
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        }
        Ok(())
    }
}

fn read(value: toml::Value) -> Result<Plan, toml::de::Error> {
    value.try_into()
}

impl Plan {
    /// The plan with `settings` applied, each `section.key=value` (any
    /// depth: `data.split.test_fraction=0.3`; the value as TOML, a bare word
    /// as a string: `federation.strategy=fedadam`, `model.hidden=[32,16]`;
    /// nothing after `=` removes the key, which then takes its default:
    /// `training.steps=`), checked as a plan file would be. A key the plan
    /// does not have or a value it cannot take is refused naming the
    /// setting.
    pub fn with_settings(&self, settings: &[String]) -> Result<Plan, PlanError> {
        let mut value = toml::Value::try_from(self)
            .map_err(|e| invalid(format!("the plan cannot be written as TOML: {e}")))?;
        let parsed = settings
            .iter()
            .map(|s| Setting::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let before = value.clone();
        for setting in &parsed {
            setting.apply(&mut value)?;
        }
        let plan = match read(value) {
            Ok(plan) => plan,
            Err(e) => return Err(self.blame(before, &parsed, e)),
        };
        plan.validate()?;
        Ok(plan)
    }

    /// The first setting after which the plan no longer reads, named with
    /// the reader's message.
    fn blame(
        &self,
        mut value: toml::Value,
        settings: &[Setting],
        error: toml::de::Error,
    ) -> PlanError {
        for setting in settings {
            if setting.apply(&mut value).is_err() {
                break;
            }
            if let Err(e) = read(value.clone()) {
                return invalid(format!("--set '{}': {}", setting.shown, e.message().trim()));
            }
        }
        invalid(format!("--set: {}", error.message().trim()))
    }
}
