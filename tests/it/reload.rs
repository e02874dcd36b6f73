//! Tests for the reload area.
