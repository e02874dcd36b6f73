//! kernel: see its issue. (skeleton)
