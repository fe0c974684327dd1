//! The updates a round has stored, with their test gradients.

use rusqlite::{Connection, params};
use tessera_core::{FitStats, ParticipantId, Timestamp, Update};

use super::{decode_parameters, unsigned};
use crate::store::{StoreError, StoredUpdate};

/// The updates stored for `run`'s round `round`, in the order they came.
pub(super) fn read(
    conn: &Connection,
    run: &str,
    round: u32,
) -> Result<Vec<StoredUpdate>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT site, base, n_examples, n_steps, mean_train_loss, delta, control, received_micros, start_loss, test_rows, test_gradient
         FROM updates WHERE run_id = ?1 AND round = ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![run, round], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, f64>(4)?,
            r.get::<_, Vec<u8>>(5)?,
            r.get::<_, Option<Vec<u8>>>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, Option<f64>>(8)?,
            r.get::<_, Option<i64>>(9)?,
            r.get::<_, Option<Vec<u8>>>(10)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (site, base, n_examples, n_steps, loss, delta, control, at, start_loss, rows, g) = row?;
        let test_gradient = match (rows, g) {
            (Some(rows), Some(g)) => Some((unsigned(rows), decode_parameters(&g)?)),
            _ => None,
        };
        out.push(StoredUpdate {
            site: ParticipantId::new(site),
            base,
            update: Update {
                delta: decode_parameters(&delta)?,
                n_examples: unsigned(n_examples),
                aux: control.map(|c| decode_parameters(&c)).transpose()?,
                stats: FitStats {
                    n_steps: unsigned(n_steps),
                    mean_train_loss: loss,
                    start_loss,
                },
            },
            test_gradient,
            at: Timestamp(unsigned(at)),
        });
    }
    Ok(out)
}
