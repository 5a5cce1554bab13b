//! Clients of the local agent and the control plane, for Causeway's own data plane.

pub mod ads;
mod delta_state;
pub mod sds;
mod tls;

pub use delta_state::{DeltaState, Reply};
