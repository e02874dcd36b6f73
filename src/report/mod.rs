//! report: see its issue. (skeleton)
