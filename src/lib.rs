//! sluice: a merge-queue bot that gates every pull request on a test of
//! exactly what would land.
//!
//! `core` decides (pure); `forge`, `executor` and `results` are thin adapters
//! to the outside world; `runtime` is the one driver that connects them;
//! `http` is the web face. `fakehub` is a fake GitHub for tests and the demo.

pub mod app;
pub mod config;
pub mod core;
pub mod demo;
pub mod executor;
pub mod fakehub;
pub mod forge;
pub mod http;
pub mod results;
pub mod runtime;
pub mod sim;
