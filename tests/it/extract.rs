//! Tests for the extract area.
