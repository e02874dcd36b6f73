//! Tests for the report area.
