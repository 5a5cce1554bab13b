//! Contract tests of the fake API server, with kube-rs as the client wherever it applies and
//! raw HTTP for wire details.

mod auth;
mod bulk;
mod common;
mod discovery;
mod faults;
mod lists;
mod watches;
mod writes;
