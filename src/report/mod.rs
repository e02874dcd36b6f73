//! The report: metrics read from whatever layout a notebook wrote, statistics computed exactly (never by
//! the LLM), experiment_report.md, SVG plots, and the notebook's hypergraph as JSON and Mermaid.
//! Everything here is pure computation on values plus plain file writes; the Lua binding is
//! `src/lua/report.rs`.

pub mod format;
pub mod hypergraph;
pub mod markdown;
pub mod metrics;
pub mod page;
pub mod plot;
pub mod stats;
