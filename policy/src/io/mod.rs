//! I/O for the simulator (feature `sim-io`): reading the trace file and drawing PNG plots.
//! Nothing in the policy core or in [`crate::sim`] uses this module.

pub mod plot;
pub mod reader;

pub use reader::{TraceReadError, read_trace};
