//! What any client of a federation needs: the connection, the agreement
//! steps, a task's parameters and an update's stream. Participants and
//! aggregators (toward their parent) both speak through it.

mod connect;
mod homomorphic;
mod identity;
mod secure;
mod session;
mod transfer;

pub use crate::supervisor::Failure;
pub use connect::{Remote, chain, endpoint, join, join_with, still_trusted};
pub use homomorphic::{HeldKey, he_submit, he_wire_check, key_holder};
pub use identity::SecureIdentity;
pub use secure::{
    DeferredInput, buffer_submit, secure_answer, secure_compare, secure_evaluate, secure_submit,
};
pub use session::{agree, can_withdraw, heartbeat_interval, read_site, withdraw};
pub use transfer::{Extras, receive_parameters, send_update, task_span};

/// 32 bytes of this machine's operating system's randomness: a secret
/// that protects this site (noise keys, masks, key pairs), never derived
/// from the plan or its seed.
pub(crate) fn os_key() -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("cannot draw secret randomness: {e}"))?;
    Ok(key)
}

/// [`os_key`], a failure this site cannot go on after.
pub(crate) fn secret_key() -> Result<[u8; 32], Failure> {
    os_key().map_err(|e| Failure::Fatal(crate::ParticipantError::Local(e)))
}
