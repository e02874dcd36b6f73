//! Atomic file writes, the one implementation every writer uses (`fs.write`, reports, plots, notebooks,
//! which stream into `temp_beside` and `persist` themselves):
//! the data goes to a temporary file in the destination's folder and is renamed over the destination,
//! so a reader or a crash never sees half a file. Missing folders are created; an existing file keeps its
//! permissions and a new one gets what a plain create would give (0666 & ~umask).
//!
//! The trial folder is written by the notebook, which is code we did not write: a file there may have
//! been replaced by a symlink (to `/usr`, to `~/.bashrc`) or a FIFO. So nothing here writes through a
//! link (the rename replaces the link itself; appends open with `O_NOFOLLOW`), and reads take regular
//! files only, opened without blocking and read up to a size cap (`read_regular`).
//!
//! The path helpers (`normalize`, `display_path`) live here too: the config, the Lua layer and the
//! report all name files the same way.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically, synced to disk before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    persist(tmp, path)
}

/// A temporary file in `path`'s folder (created with its parents), to be `persist`ed over `path`.
pub fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
    tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(&dir)
}

/// Rename a finished temporary file over `path`, with `path`'s permissions (or a plain create's).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    // symlink_metadata: a link in the destination's place is replaced, so its target's mode is no concern
    let perms = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.permissions(),
        _ => {
            // tempfile creates 0600
            use std::os::unix::fs::PermissionsExt;
            std::fs::Permissions::from_mode(0o666 & !umask())
        }
    };
    std::fs::set_permissions(tmp.path(), perms)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Open `path` for appending (created when missing, 0666 & ~umask), never through a symlink: a link
/// in its place fails with `ELOOP` ("Too many levels of symbolic links") instead of appending to
/// whatever it points at.
pub fn open_append_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Append `bytes` as one whole record: one `write_all` on an `O_APPEND` descriptor, and when it fails
/// part way (ENOSPC, EDQUOT, EFBIG) the file is cut back to its length before, so a reader never sees
/// half a record. `file` must be opened for appending and not be written by anyone else meanwhile
/// (callers hold a lock).
pub fn append_whole(file: &std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    let before = file.metadata()?.len();
    let mut w = file;
    if let Err(e) = w.write_all(bytes) {
        let _ = file.set_len(before);
        return Err(e);
    }
    Ok(())
}

/// Why `read_regular` refused a file (inside the `io::Error`, for callers that name the reason).
#[derive(Debug)]
pub enum Refused {
    /// A FIFO, socket, device or folder: reading it could block forever or never end.
    NotRegular(&'static str),
    /// Bigger than the cap the caller gave.
    TooLarge { size: u64, max: u64 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotRegular(what) => write!(f, "not a regular file (it is {what})"),
            Refused::TooLarge { size, max } => {
                write!(f, "the file is {} bytes, more than the limit of {} bytes", size, max)
            }
        }
    }
}

impl std::error::Error for Refused {}

/// The `Refused` reason inside an error from `read_regular`, if that is why it failed.
pub fn refused(e: &std::io::Error) -> Option<&Refused> {
    e.get_ref().and_then(|r| r.downcast_ref::<Refused>())
}

/// Read a regular file of at most `max` bytes. The file is opened with `O_NONBLOCK`, so a FIFO in its
/// place cannot hang the open (which would ignore Ctrl-C: the signal handler only sets a flag), and its
/// type and size are checked on the open descriptor before anything is read; the read itself stops at
/// `max + 1` bytes in case the file grows meanwhile.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let m = f.metadata()?;
    let t = m.file_type();
    if !t.is_file() {
        let what = if t.is_dir() {
            "a folder"
        } else if t.is_fifo() {
            "a FIFO, a named pipe"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(std::io::Error::other(Refused::NotRegular(what)));
    }
    if m.len() > max {
        return Err(std::io::Error::other(Refused::TooLarge { size: m.len(), max }));
    }
    let mut out = Vec::with_capacity(m.len() as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::other(Refused::TooLarge { size: out.len() as u64, max }));
    }
    Ok(out)
}

/// `p` made absolute with `.` and `..` removed lexically (no file system access, so it works for paths
/// that do not exist yet).
pub fn absolute_clean(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The process umask, read without changing it (setting it to read it would race with other threads).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Umask:").and_then(|v| u32::from_str_radix(v.trim(), 8).ok()))
        })
        .unwrap_or(0o022)
}

/// Remove `.` and `..` components without touching the file system (the path may not exist yet).
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A display name for a file: relative to the current directory when it is inside it.
pub fn display_path(p: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    match p.strip_prefix(&cwd) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => p.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/a.txt");
        write_atomic(&p, b"one").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_symlink_in_the_way_is_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target.txt");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("report.md");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        let e = open_append_nofollow(&d.path().join("loop")).map(|_| ());
        assert!(e.is_ok());
        std::os::unix::fs::symlink(&target, d.path().join("events.jsonl")).unwrap();
        let e = open_append_nofollow(&d.path().join("events.jsonl")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }
}
