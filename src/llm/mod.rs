//! The LLM engine (see issue 3).
pub mod extract;
