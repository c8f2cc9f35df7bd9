//! # mule-testbed
//!
//! Tools for evaluating Mule on contact traces:
//!
//! - [`trace`]: parsing and normalising contact traces (CSV and The ONE format);
//! - [`oracle`]: a lower bound on every node's completion time, from the trace alone;
//! - [`fleet`]: the fleet simulation through real engine sessions over harness links
//!   ("model: real sessions", the default for Mule and rarest-first);
//! - [`sim`]: the piece-level discrete-event model ("model: piece-level"), with pluggable
//!   [`strategy`] implementations (the baselines, and Mule for comparison);
//! - [`report`]: JSON/CSV results, a Markdown summary and plots;
//! - [`sweep`]: the spread of the headline figures across several seeds.
//!
//! The emulation with real processes in network namespaces (`mule-testbed emulate`)
//! is meant to reuse [`trace`], [`oracle`] and [`report`]: it only needs to produce the
//! same per-node [`report::NodeResult`] rows from the daemons' metrics.

pub mod emulate;
pub mod fleet;
pub mod mule_strategy;
pub mod oracle;
pub mod pieces;
pub mod plot;
pub mod report;
pub mod run;
pub mod sim;
pub mod strategy;
pub mod sweep;
pub mod synth;
pub mod trace;
pub mod units;
