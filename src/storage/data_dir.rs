//! A node's data directory (`data_dir`: its SQLite event log, playback log and scratch) belongs
//! to one running node at a time.
//!
//! Nothing stopped a second `reel serve` from starting on a data directory a running node
//! used, on another port (`--listen`), or a second `[[node]]` of `cluster.toml` given the same
//! `data_dir`. Seen as a user: the second process cleared the first one's scratch at its start,
//! which failed the first's running transcode ("No such file or directory"), and, being the
//! same node id, took over the first's video lease as if resuming its own crashed run. The
//! store's fencing kept the outputs right, but two processes went on writing one event log and
//! appending to, and rotating, one `playback.jsonl`.
//!
//! So a node takes an exclusive lock on `{data_dir}/reel.lock` before it touches anything there,
//! and holds it while it runs, the way PostgreSQL's `postmaster.pid` guards its data directory.
//! The lock is the kernel's (`flock`, [`std::fs::File::try_lock`]): it ends with the process
//! however the process ends, so a node killed with `kill -9` leaves no stale lock to clear by
//! hand, and the file's contents (the holder's process id) are only for the message. On a file
//! system that has no locks (`flock` answers `ENOLCK` or `EOPNOTSUPP`: some network and FUSE
//! file systems) the node starts anyway and warns: refusing would leave reel unusable there.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_NAME: &str = "reel.lock";

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another node in this process) holds the directory. `pid` is the
    /// holder's process id when it wrote one.
    #[error(
        "data directory {} is in use by another reel process{}: each node needs a data \
         directory of its own (stop that node, or give this one another --data-dir, or another \
         data_dir in cluster.toml)",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The holder's process id, from the lock file.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened or locked (permissions, a file system without locks).
    #[error("cannot lock data directory {}: {source}", dir.display())]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// The exclusive lock on a data directory; released when dropped, or when the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    /// Whether the lock is held: false on a file system without `flock` ([`locks_unsupported`]).
    held: bool,
}

/// Whether `e`, from `flock`, says the file system has no locks (`ENOLCK`, `EOPNOTSUPP`: some
/// network and FUSE file systems), rather than that the lock was refused or the file is bad.
pub fn locks_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(nix::libc::ENOLCK | nix::libc::EOPNOTSUPP)
        )
}

impl DataDirLock {
    /// Lock `dir` (which must exist) for this process, and write its process id into the lock
    /// file. Does not wait: a directory already locked is an error at once.
    ///
    /// Errors: [`LockError::InUse`] when the directory is locked, by any process (this one
    /// too: a lock is per open file); [`LockError::Io`] when the lock file cannot be opened or
    /// written.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        // Not truncated on open: the holder's pid stays readable for the message below.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_NAME))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            // Refusing to start would make reel unusable there; the caller warns instead.
            Err(TryLockError::Error(e)) if locks_unsupported(&e) => {
                return Ok(Self {
                    _file: file,
                    held: false,
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self {
            _file: file,
            held: true,
        })
    }

    /// Whether the directory is locked: false when its file system has no locks, and then
    /// nothing stops a second node there.
    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_is_refused_with_its_holders_pid_until_the_lock_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let pid = std::process::id();
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::InUse { pid: Some(p), .. }) => assert_eq!(p, pid),
            other => panic!("a second lock of a locked directory: {other:?}"),
        }
        let text = std::fs::read_to_string(dir.path().join(LOCK_NAME)).unwrap();
        assert_eq!(text, format!("{pid}\n"));
        drop(held);
        let again = DataDirLock::acquire(dir.path());
        assert!(again.is_ok(), "released with its value: {again:?}");
    }

    #[test]
    fn a_stale_lock_file_without_a_holder_is_taken_over() {
        // A node killed with kill -9 leaves its file, not its lock.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_NAME), "999999999\nmore\n").unwrap();
        let _lock = DataDirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_NAME)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }

    #[test]
    fn only_a_file_system_without_locks_is_let_through() {
        use std::io::Error;
        assert!(locks_unsupported(&Error::from_raw_os_error(
            nix::libc::ENOLCK
        )));
        assert!(locks_unsupported(&Error::from_raw_os_error(
            nix::libc::EOPNOTSUPP
        )));
        for errno in [nix::libc::EACCES, nix::libc::EBADF, nix::libc::EIO] {
            assert!(
                !locks_unsupported(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(DataDirLock::acquire(dir.path()).unwrap().held());
    }

    #[test]
    fn the_message_names_the_directory_and_the_pid() {
        let e = LockError::InUse {
            dir: PathBuf::from("/srv/reel-data"),
            pid: Some(42),
        };
        let text = e.to_string();
        assert!(
            text.contains("/srv/reel-data") && text.contains("(pid 42)"),
            "{text}"
        );
        let e = LockError::InUse {
            dir: PathBuf::from("d"),
            pid: None,
        };
        assert!(!e.to_string().contains("pid"), "{e}");
    }
}
