//! Shared parts of the benchmarks that run a whole local mesh: starting the `causeway demo`
//! plan as child processes, reading the debug API and Envoy's admin, HTTP load loops bounded in
//! time and count, and process RSS from `/proc`.

pub mod control_plane;
pub mod demo_mesh;
pub mod http_load;
pub mod procfs;
