//! `tessera status`'s lines on what a run waits for and each site's last
//! call, from the live view the coordinator keeps in its database.

use serde_json::Value;

fn time(v: &Value) -> Option<String> {
    v.as_u64().map(tessera_core::utc)
}

/// The human lines of a stored live view (none when it cannot be read).
pub fn lines(view: &str) -> Vec<String> {
    let Ok(view) = serde_json::from_str::<Value>(view) else {
        return vec!["live view: unreadable".into()];
    };
    let mut lines = Vec::new();
    let updated = time(&view["updated_unix_micros"]).unwrap_or_else(|| "?".into());
    let waiting = &view["waiting"];
    if waiting.is_null() {
        lines.push(format!("waiting for: nothing (as of {updated})"));
    } else {
        let sites: Vec<&str> = waiting["sites"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let since = time(&waiting["since_unix_micros"]).unwrap_or_else(|| "?".into());
        let sites = if sites.is_empty() {
            "no site".to_string()
        } else {
            sites.join(", ")
        };
        lines.push(format!(
            "waiting for: {sites} in {} since {since} (as of {updated})",
            waiting["step"].as_str().unwrap_or("?")
        ));
        if let Some(detail) = waiting["detail"].as_str().filter(|d| !d.is_empty()) {
            lines.push(format!("  {detail}"));
        }
    }
    if let Some(sites) = view["sites"].as_array().filter(|s| !s.is_empty()) {
        lines.push("sites:".into());
        for site in sites {
            let seen = time(&site["last_seen_unix_micros"])
                .map_or_else(|| "never heard from".into(), |t| format!("last seen {t}"));
            let note = site["note"]
                .as_str()
                .map_or_else(String::new, |n| format!(": {n}"));
            lines.push(format!(
                "  {:<16} {:<10} {seen}{note}",
                site["site"].as_str().unwrap_or("?"),
                site["state"].as_str().unwrap_or("?"),
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn a_view_names_the_step_the_sites_and_why_one_left() {
        let view = r#"{"updated_unix_micros":1700000010000000,
            "waiting":{"step":"agreement: column kinds","sites":["va"],"detail":"3 of 4 sites have offered","since_unix_micros":1700000000000000},
            "sites":[{"site":"va","state":"left","note":"withdrew: cannot read va.csv","last_seen_unix_micros":1700000000000000},
                     {"site":"cleveland","state":"live","note":null,"last_seen_unix_micros":null}]}"#;
        let text = lines(view).join("\n");
        assert!(
            text.contains(
                "waiting for: va in agreement: column kinds since 2023-11-14 22:13:20 UTC"
            ),
            "{text}"
        );
        assert!(text.contains("3 of 4 sites have offered"), "{text}");
        assert!(
            text.contains("last seen 2023-11-14 22:13:20 UTC: withdrew: cannot read va.csv"),
            "{text}"
        );
        assert!(text.contains("never heard from"), "{text}");
    }
}
