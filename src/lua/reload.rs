//! Hot reload of `require`d Lua modules.
//!
//! Every module the searcher loads from a real file is recorded (`LoadedModules`) and its folder is
//! watched (notify + the full debouncer, 150 ms). Folders, not files, are watched: an editor that saves
//! by writing a temp file and renaming it over replaces the inode, and a watch on the file would go
//! silent after the first such save. Nothing is swapped in from the watcher thread; `reload(lua)` (Lua:
//! `host.reload()`) is the safe point. There, each module whose file changed is compiled and run in
//! full; only a module that loads cleanly and returns a table replaces `package.loaded[name]`. Anything
//! else (syntax error, error at load time, not a table, empty or missing file) keeps the previous
//! version and prints `<file>:<line>: <error> — keeping the previous version` to stderr.
//!
//! Reload must not trigger itself: notify on Linux reports our own reads (`Access(Open)`), so events are
//! filtered by kind, and a module is only reloaded when its file's (mtime, len, inode) differ from what
//! was last loaded — `stat` causes no event. Each `reload` call also stats every module file, so edits
//! the watcher cannot see (a network file system edited from another machine, a failed watch) are still
//! picked up once they have settled.
//!
//! Only `package.loaded` is replaced: a `local m = require("m")` captured earlier keeps the old table, so
//! code that wants edits picked up calls `require` again after the safe point.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mlua::prelude::*;
use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer_opt, DebounceEventResult, Debouncer, NoCache};

use std::cell::RefCell;

use crate::events::EventLog;
use crate::lua::ctx::HostCtx;

/// Where a `require`d Lua module came from; the reloader watches the files behind these.
#[derive(Debug, Clone)]
pub struct ModuleSource {
    /// The file, when it is a real file (None for embedded copies).
    pub file: Option<PathBuf>,
    /// The chunk name without the leading `@`.
    pub chunk: String,
}

/// Lua modules loaded through the searcher, by module name: what the reloader watches and swaps.
#[derive(Default)]
pub struct LoadedModules(pub RefCell<HashMap<String, ModuleSource>>);

/// Set up the reloader's state on a fresh VM (before any `require`).
pub fn install(lua: &Lua) {
    lua.set_app_data(LoadedModules::default());
}

/// What identifies a version of a file on disk: (mtime, length, inode); None when it is missing.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[derive(Default)]
struct Dirty {
    /// Folders in which something was created, modified, renamed or removed.
    dirs: HashSet<PathBuf>,
    /// The watcher reported an error (e.g. a queue overflow). Every module is stat-ed at each reload
    /// anyway, so this is only kept for diagnostics.
    rescan: bool,
}

/// Reloader state, stored as Lua app data.
#[derive(Default)]
struct ReloadState {
    debouncer: Option<Debouncer<RecommendedWatcher, NoCache>>,
    /// Watching is impossible: do not try again (the stat sweep at each reload still finds changes).
    fallback: bool,
    watched: HashSet<PathBuf>,
    dirty: Arc<Mutex<Dirty>>,
    /// The version of each module file last loaded (or last tried), by module name.
    stamps: HashMap<String, Stamp>,
    /// A change seen by stat but not (yet) reported by the watcher, waiting to settle.
    pending: HashMap<String, Stamp>,
    /// When each module was first searched for. A module's dependencies are searched after it (its
    /// chunk requires them), so reloading in reverse order updates dependencies before their users.
    order: HashMap<String, usize>,
}

/// The debounce window: an editor's burst of writes becomes one change.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// One failed reload.
#[derive(Debug, Clone)]
pub struct ReloadError {
    pub module: String,
    pub file: String,
    /// `<file>:<line>: <error>` (the line where Lua knows it).
    pub message: String,
}

/// Called by the module searcher for each module it loads: record it, remember its file's version and
/// watch its folder.
pub fn on_require(lua: &Lua, name: &str, src: ModuleSource) {
    let file = src.file.clone();
    if let Some(loaded) = lua.app_data_ref::<LoadedModules>() {
        loaded.0.borrow_mut().insert(name.to_string(), src);
    }
    let Some(file) = &file else { return };
    if lua.app_data_ref::<ReloadState>().is_none() {
        // try_: set_app_data panics while other app data is borrowed; losing one watch is not worth that.
        let _ = lua.try_set_app_data(ReloadState::default());
    }
    let Ok(Some(mut st)) = lua.try_app_data_mut::<ReloadState>() else { return };
    st.stamps.insert(name.to_string(), stamp(file));
    let n = st.order.len();
    st.order.entry(name.to_string()).or_insert(n);
    let Some(dir) = file.parent().map(Path::to_path_buf) else { return };
    if st.fallback || st.watched.contains(&dir) {
        return;
    }
    if st.debouncer.is_none() {
        let dirty = st.dirty.clone();
        let handler = move |res: DebounceEventResult| {
            let mut d = dirty.lock().unwrap_or_else(|e| e.into_inner());
            match res {
                Ok(events) => {
                    for ev in events {
                        // Our own reads show up as Access(Open)/Access(Close(Read)): ignore them.
                        let relevant = matches!(
                            ev.event.kind,
                            EventKind::Create(_)
                                | EventKind::Modify(_)
                                | EventKind::Remove(_)
                                | EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write))
                        );
                        if relevant {
                            for p in &ev.event.paths {
                                if let Some(parent) = p.parent() {
                                    d.dirs.insert(parent.to_path_buf());
                                }
                                d.dirs.insert(p.clone());
                            }
                        }
                    }
                }
                Err(_) => d.rescan = true,
            }
        };
        match new_debouncer_opt::<_, RecommendedWatcher, NoCache>(
            DEBOUNCE,
            None,
            handler,
            NoCache,
            notify::Config::default(),
        ) {
            Ok(deb) => st.debouncer = Some(deb),
            Err(e) => {
                tracing::debug!("hot reload: no file watcher ({e}); checking files at each reload instead");
                st.fallback = true;
                return;
            }
        }
    }
    let res = st.debouncer.as_mut().map(|d| d.watch(&dir, RecursiveMode::NonRecursive));
    match res {
        Some(Ok(())) => {
            st.watched.insert(dir);
        }
        Some(Err(e)) => {
            tracing::debug!("hot reload: cannot watch {} ({e}); checking files at each reload instead", dir.display());
            st.fallback = true;
        }
        None => {}
    }
}

/// The modules whose file changed since they were last loaded: (name, file, chunk name, new stamp).
///
/// Every module file is stat-ed (cheap, and it fires no event), not only those the watcher reported:
/// inotify misses edits made on another machine of a network file system, and a watch may have failed.
/// A change the watcher did not report is taken once it has settled — its mtime is older than the
/// debounce window, or the same new version was already seen at the previous call — so a file an editor
/// is still writing is not loaded half-written.
fn changed_modules(lua: &Lua) -> Vec<(String, PathBuf, String, Stamp)> {
    let Ok(Some(loaded)) = lua.try_app_data_ref::<LoadedModules>() else { return Vec::new() };
    let Ok(Some(mut st)) = lua.try_app_data_mut::<ReloadState>() else { return Vec::new() };
    let (dirs, _rescan) = {
        let mut d = st.dirty.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut d.dirs), std::mem::take(&mut d.rescan))
    };
    let mut out = Vec::new();
    let mut mods: Vec<_> = loaded.0.borrow().iter().map(|(n, s)| (n.clone(), s.clone())).collect();
    mods.sort_by_key(|(n, _)| std::cmp::Reverse(st.order.get(n).copied().unwrap_or(0)));
    let wall = SystemTime::now();
    for (name, src) in mods {
        let Some(file) = src.file else { continue };
        let now = stamp(&file);
        if st.stamps.get(&name) == Some(&now) {
            st.pending.remove(&name);
            continue;
        }
        let reported = dirs.contains(&file) || file.parent().is_some_and(|p| dirs.contains(p));
        let settled = reported
            || st.pending.get(&name) == Some(&now)
            || now.is_some_and(|(mtime, ..)| wall.duration_since(mtime).is_ok_and(|d| d >= DEBOUNCE));
        if settled {
            st.pending.remove(&name);
            st.stamps.insert(name.clone(), now);
            out.push((name, file, src.chunk, now));
        } else {
            st.pending.insert(name, now);
        }
    }
    out
}

/// Load one module's new version completely; Ok(table) only when it is usable.
fn load_new(lua: &Lua, name: &str, file: &Path, chunk: &str, st: Stamp) -> Result<LuaTable, String> {
    if st.is_none() {
        return Err(format!("{chunk}: the file is gone"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{chunk}: cannot read: {e}"))?;
    if text.trim().is_empty() {
        return Err(format!("{chunk}: the file is empty"));
    }
    let f = lua.load(&text).set_name(format!("@{chunk}")).into_function().map_err(|e| lua_message(&e))?;
    match f.call::<LuaValue>((name, chunk)) {
        Ok(LuaValue::Table(t)) => Ok(t),
        Ok(other) => Err(format!("{chunk}: the module returned {} instead of a table", other.type_name())),
        Err(e) => Err(lua_message(&e)),
    }
}

/// The message of a Lua error without mlua's "syntax error:"/"runtime error:" prefix or traceback.
fn lua_message(e: &LuaError) -> String {
    let msg = match e {
        LuaError::SyntaxError { message, .. } => message.clone(),
        LuaError::RuntimeError(m) => m.clone(),
        LuaError::CallbackError { cause, .. } => return lua_message(cause),
        LuaError::WithContext { cause, .. } => return lua_message(cause),
        other => other.to_string(),
    };
    msg.split("\nstack traceback:").next().unwrap_or(&msg).trim().to_string()
}

/// The safe point: swap in edited modules that load cleanly, keep the previous version of the others.
/// Returns the names reloaded and the failures (each already printed to stderr). Each is a `reload`
/// event in `events` (the trial whose step reached the safe point), else in the current event log.
pub fn reload_report(lua: &Lua, events: Option<&EventLog>) -> LuaResult<(Vec<String>, Vec<ReloadError>)> {
    let mut names = Vec::new();
    let mut errors = Vec::new();
    let changed = changed_modules(lua);
    if changed.is_empty() {
        return Ok((names, errors));
    }
    let ctx = HostCtx::get(lua);
    let events = events.unwrap_or(&ctx.events);
    let loaded: LuaTable = lua.globals().get::<LuaTable>("package")?.get("loaded")?;
    for (name, file, chunk, st) in changed {
        match load_new(lua, &name, &file, &chunk, st) {
            Ok(t) => {
                loaded.set(name.as_str(), t)?;
                if ctx.verbosity >= 0 {
                    crate::ui::eline(&format!("reloaded {name} ({chunk})"));
                }
                events.emit("reload", serde_json::json!({"module": name, "file": chunk, "ok": true}));
                names.push(name);
            }
            Err(message) => {
                crate::ui::eline(&format!("{message} — keeping the previous version"));
                events
                    .emit("reload", serde_json::json!({"module": name, "file": chunk, "ok": false, "error": message}));
                errors.push(ReloadError { module: name, file: chunk, message });
            }
        }
    }
    Ok((names, errors))
}

/// The safe point, for Rust callers: returns the list of module names reloaded.
pub fn reload(lua: &Lua, events: Option<&EventLog>) -> LuaResult<LuaTable> {
    let (names, _) = reload_report(lua, events)?;
    let t = lua.create_sequence_from(names)?;
    t.set_metatable(Some(lua.array_metatable()))?;
    Ok(t)
}

/// `host.reload{events = sink}` → `names, errors`: the modules reloaded, and `{module=, file=, message=}`
/// for each edit that did not load (the previous version is kept); `events`: the trial's log the
/// `reload` events go to.
pub fn reload_lua(lua: &Lua, events: Option<&EventLog>) -> LuaResult<(LuaTable, LuaTable)> {
    let (names, errors) = reload_report(lua, events)?;
    let n = lua.create_sequence_from(names)?;
    n.set_metatable(Some(lua.array_metatable()))?;
    let e = lua.create_table()?;
    for (i, err) in errors.into_iter().enumerate() {
        let t = lua.create_table()?;
        t.set("module", err.module)?;
        t.set("file", err.file)?;
        t.set("message", err.message)?;
        e.raw_set(i + 1, t)?;
    }
    e.set_metatable(Some(lua.array_metatable()))?;
    Ok((n, e))
}
