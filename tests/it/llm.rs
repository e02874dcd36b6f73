//! Tests for the llm area.
