//! A run that waits names what it waits for: a site whose data cannot be
//! read once it has joined withdraws with its reason, and the coordinator's
//! log, `tessera status` (text and JSON) and `/metrics` name it as what the
//! agreement waits for, within seconds. (A `--data` path that does not exist
//! at all is refused by the participant before it joins.)

use std::time::{Duration, Instant};

use crate::util::procs::{HEART_SITES, coordinator, free_port, participant, participant_with};
use crate::util::status::status;
use crate::util::{self, Scratch};
use crate::{LIMIT, http_get, plan};

#[test]
fn a_site_whose_data_file_is_missing_withdraws_and_status_names_it() {
    if util::skip_e2e("a_site_whose_data_file_is_missing_withdraws_and_status_names_it") {
        return;
    }
    let s = Scratch::new("deploy-waiting-missing-data");
    let plan = plan(&s, "fedavg", "");
    let db = s.path("c.sqlite");
    let metrics = format!("127.0.0.1:{}", free_port());
    let (coordinator, url) = coordinator(&s.dir, &plan, &db, 0, &["--metrics", &metrics]);
    let started = Instant::now();
    let _others: Vec<_> = HEART_SITES[..3]
        .iter()
        .map(|site| participant(&s.dir, &url, site, &[]))
        .collect();
    // A folder where the data file should be: it opens, so the participant
    // joins, and reading it as rows fails during the site's set-up.
    let missing = s.path("va-missing.data");
    std::fs::create_dir(&missing).unwrap();
    let mut va = participant_with(&s.dir, &url, "va", &missing, &[]);
    assert!(!va.wait(LIMIT).success(), "{}", va.log());
    // Named, with the reason, within seconds of the start.
    let mut named = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(st) = status(&db)
            && st.0["waiting"]["sites"] == serde_json::json!(["va"])
            && st.0["sites"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["site"] == "va" && x["state"] == "left"))
        {
            named = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = named.unwrap_or_else(|| {
        panic!(
            "status does not name va as awaited within 20 s: {:?}\n{}",
            status(&db).map(|s| s.0),
            coordinator.log()
        )
    });
    let doc = &st.0;
    assert_eq!(doc["waiting"]["step"], "agreement: column kinds", "{doc}");
    assert!(doc["waiting"]["since_unix_micros"].as_u64().unwrap() > 0);
    let va_view = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["site"] == "va")
        .unwrap();
    let note = va_view["note"].as_str().unwrap();
    assert!(
        note.starts_with("withdrew: ") && note.contains("va-missing.data"),
        "{va_view}"
    );
    assert!(va_view["last_seen_unix_micros"].as_u64().unwrap() > 0);
    let others_live = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["state"] == "live" && x["last_seen_unix_micros"].as_u64().is_some())
        .count();
    assert_eq!(others_live, 3, "{doc}");
    assert!(
        st.audit_count(|a| a.site == "va"
            && a.action == "withdraw"
            && a.detail.contains("va-missing.data"))
            == 1,
        "{doc}"
    );
    // The human status and the metrics say the same.
    let text = s.run(&["status", "--db", db.to_str().unwrap()]).ok();
    assert!(
        text.contains("waiting for: va in agreement: column kinds since "),
        "{text}"
    );
    assert!(text.contains("withdrew: "), "{text}");
    let scraped = http_get(&metrics, "/metrics");
    assert!(scraped.contains("tessera_waiting_sites 1"), "{scraped}");
    assert!(
        scraped.contains("tessera_site_awaited{site=\"va\"} 1"),
        "{scraped}"
    );
    // The coordinator's log names the site, the step and the reason.
    let log = coordinator.log();
    assert!(
        log.lines().any(|l| l.contains("waiting")
            && l.contains("agreement: column kinds")
            && l.contains("va (withdrew: ")),
        "{log}"
    );
}
