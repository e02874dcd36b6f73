//! cellsci: a Rust host that gives Lua scripts fast, reliable primitives (LLM, notebook, kernel, report,
//! files) for running LLM-driven notebook experiments. Policy lives in Lua (`scripts/`, `stdlib/`);
//! mechanisms live here.

pub mod cli;
pub mod config;
pub mod embedded;
pub mod error;
pub mod events;
pub mod files;
pub mod host;
pub mod jsonx;
pub mod kernel;
pub mod llm;
pub mod lua;
pub mod nbrun;
pub mod notebook;
pub mod reload;
pub mod report;
pub mod signals;
pub mod ui;
