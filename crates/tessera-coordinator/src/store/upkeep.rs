//! The database file's upkeep when a coordinator opens it: its mode (0600),
//! the noise key an older coordinator kept (wiped and dropped), and the
//! columns older databases lack (added).

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// Creates `path` with mode 0600 if it does not exist; tightens an existing
/// file that others may read or write to 0600, with a warning.
pub(super) fn private_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::File(format!("{}: {e}", path.display()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the database could be read by others; setting its mode to 0600"
                    );
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
            }
            Err(e) => return Err(io(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Older coordinators kept each run's central DP noise key in a
/// `run_secrets` table, beside the models it noised. Its rows are erased
/// with `secure_delete` (their pages overwritten with zeros), the table is
/// dropped and the write-ahead log checkpointed and truncated, so the key
/// leaves the file; the key itself is never read.
pub(super) fn drop_legacy_secrets(conn: &Connection) -> Result<(), StoreError> {
    let exists: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'run_secrets'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(());
    }
    tracing::warn!(
        "the database holds a run_secrets table from an older coordinator; erasing it \
         (noise keys are no longer stored: a restart replays the stored noised rounds)"
    );
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.execute_batch("DELETE FROM run_secrets; DROP TABLE run_secrets;")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.pragma_update(None, "secure_delete", "OFF")?;
    Ok(())
}

/// Columns added since a table was first created: a database from an older
/// coordinator gains them with their defaults.
pub(super) fn add_missing_columns(conn: &Connection) -> Result<(), StoreError> {
    const ADDED: &[(&str, &str, &str)] = &[
        (
            "round_aggregates",
            "n_participants",
            "INTEGER NOT NULL DEFAULT 0",
        ),
        ("updates", "start_loss", "REAL"),
        ("updates", "test_rows", "INTEGER"),
        ("updates", "test_gradient", "BLOB"),
    ];
    for (table, column, kind) in ADDED {
        let present: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if present == 0 {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}
