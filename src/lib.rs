//! sluice: a merge-queue bot that gates every pull request on a test of
//! exactly what would land.
//!
//! `core` decides (pure); `forge`, `executor` and `results` are thin adapters
//! to the outside world; `runtime` is the one driver that connects them;
//! `http` is the web face. `fakehub` is a fake GitHub for tests and the demo.

// The HTTP face's warp filter chain is deep enough that an optimized build
// overflows the default trait-evaluation depth (E0275 on `Unpin`).
#![recursion_limit = "256"]

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
