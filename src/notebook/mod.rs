//! notebook: see its issue. (skeleton)
