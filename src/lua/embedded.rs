//! The bundled scripts, stdlib modules and prompts, embedded at build time (see `build.rs`).
//!
//! Debug builds prefer the source tree's copy when it exists, so editing `stdlib/` needs no rebuild
//! while developing; release builds always use the embedded copy (and so does a build whose profile
//! turns debug assertions off for this crate, like the `wheel-test` profile the wheel test builds).

use std::borrow::Cow;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

mod demo {
    include!(concat!(env!("OUT_DIR"), "/demo.rs"));
}

/// The demo `cellsci demo` writes out, as (path relative to the demo folder, bytes): always the copy
/// embedded at build time.
pub fn demo_files() -> &'static [(&'static str, &'static [u8])] {
    demo::DEMO
}

/// Every embedded file as (relative path like `stdlib/retry.lua`, contents).
pub fn files() -> &'static [(&'static str, &'static str)] {
    generated::FILES
}

/// The contents of an embedded file by relative path.
pub fn get(rel: &str) -> Option<Cow<'static, str>> {
    let (_, text) = files().iter().find(|(p, _)| *p == rel)?;
    if cfg!(debug_assertions) {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        if let Ok(t) = std::fs::read_to_string(src) {
            return Some(Cow::Owned(t));
        }
    }
    Some(Cow::Borrowed(text))
}
