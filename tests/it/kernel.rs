//! Tests for the kernel area.
