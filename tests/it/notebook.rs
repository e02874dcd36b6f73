//! Tests for the notebook area.
