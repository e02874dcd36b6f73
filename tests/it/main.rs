//! Integration tests: one binary, modules by area. Helpers live in `util`.
mod branches;
mod cli;
mod extract;
mod faults;
mod files;
mod gateway;
mod gateway_harness;
mod kernel;
mod llm;
mod notebook;
mod pipeline;
mod reload;
mod report;
mod run_page;
mod runner;
mod util;
mod view;
