//! A database of its own on the test PostgreSQL server
//! (`TESSERA_POSTGRES_URL`, which `.ci/postgres` starts).

#![allow(dead_code)]

/// A new, empty database named after `test`, as a URL; `None` (the test
/// does not run) without a server, unless `TESSERA_REQUIRE_POSTGRES` is set.
pub fn fresh_database(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("TESSERA_POSTGRES_URL") else {
        assert!(
            std::env::var_os("TESSERA_REQUIRE_POSTGRES").is_none(),
            "TESSERA_REQUIRE_POSTGRES is set but TESSERA_POSTGRES_URL is not (.ci/postgres)"
        );
        eprintln!("{test}: skipped, no TESSERA_POSTGRES_URL (.ci/postgres starts a server)");
        return None;
    };
    // CREATE DATABASE copies template1 and refuses while another session
    // copies it: one at a time in this process.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {test} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {test}"))
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{test}"))
}
