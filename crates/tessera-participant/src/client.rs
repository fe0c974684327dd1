//! What any client of a federation needs: the connection, the agreement
//! steps, a task's parameters and an update's stream. Participants and
//! aggregators (toward their parent) both speak through it.

mod connect;
mod identity;
mod secure;
mod session;
mod transfer;

pub use crate::supervisor::Failure;
pub use connect::{Remote, chain, endpoint, join, still_trusted};
pub use identity::SecureIdentity;
pub use secure::{DeferredInput, secure_answer, secure_evaluate, secure_submit};
pub use session::{agree, can_withdraw, heartbeat_interval, read_site, withdraw};
pub use transfer::{receive_parameters, send_update};
