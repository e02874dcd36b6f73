//! Tests for the pipeline area.
