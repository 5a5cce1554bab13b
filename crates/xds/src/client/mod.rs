//! Clients of the local agent and the control plane, for Causeway's own data plane.

pub mod ads;
mod delta_state;
pub mod sds;
mod sotw_state;
mod tls;

pub use delta_state::{DeltaState, Reply};
pub use sotw_state::{SotwReply, SotwState};
