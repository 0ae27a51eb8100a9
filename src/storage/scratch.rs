//! The node's scratch directory (`{data_dir}/scratch`), kept bounded.
//!
//! Layout: `scratch/{video_id}/` holds the source downloaded from a remote store (`source`,
//! written as `source.{n}.part` first; [`super::Storage::source_path`]) and one directory per
//! running transcode task (its ffmpeg outputs, removed when the task ends). A source copy
//! serves every task of its video that runs on this node, so it is kept while tasks use it; the
//! local store needs no copy and leaves only the empty `scratch/{video_id}/`.
//!
//! Nothing else removed these: on S3 every processed video's source stayed on the node's disk
//! until it restarted (the directory is cleared at start), 100 MB a video at the seed's 12,000
//! uploads a day. [`sweep`] removes what no task has used for [`SOURCE_KEEP`]: a source copy
//! whose modification time is older (a task that finds the copy refreshes it, [`touch`]), a
//! partial download nobody writes to any more, and then the video's directory once it is
//! empty. The worker pool runs it every [`SWEEP_EVERY`], skipping the videos it has tasks of.
//!
//! Safe against a task still reading a source: the sweep only unlinks (an open file stays
//! readable to ffmpeg on Unix), never removes a non-empty directory (a running task's output
//! directory keeps its video's directory), and a task that comes after the sweep downloads the
//! source again.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How long a source copy (or an empty video directory) no task has used is kept: 10 minutes.
/// The tasks of one video on one node follow each other seconds apart, so this keeps one
/// download per video and node while it is processed.
pub const SOURCE_KEEP: Duration = Duration::from_secs(600);

/// How often the worker pool sweeps the scratch directory.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What one [`sweep`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Source copies and partial downloads removed.
    pub files: u64,
    /// Their size, bytes.
    pub bytes: u64,
    /// Empty video directories removed.
    pub dirs: u64,
}

/// Whether something last modified at `modified` has been left alone for `keep` by `now`.
/// A time in the future (a clock step) is not stale.
pub fn stale(modified: SystemTime, now: SystemTime, keep: Duration) -> bool {
    now.duration_since(modified).is_ok_and(|idle| idle >= keep)
}

/// Remove from `scratch` the source copies and partial downloads untouched for `keep` at
/// `now`, then the video directories left empty (or empty and untouched for `keep`), except
/// those of the videos in `busy` (the pool's queued and running tasks). Entries that are not
/// directories, and files other than sources, are left alone.
///
/// Errors: `scratch` cannot be listed. An entry that cannot be read or removed (removed by
/// someone else meanwhile, say) is skipped.
pub fn sweep(
    scratch: &Path,
    busy: &HashSet<String>,
    now: SystemTime,
    keep: Duration,
) -> io::Result<Swept> {
    let mut swept = Swept::default();
    for entry in std::fs::read_dir(scratch)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(video_id) = name.to_str() else {
            continue;
        };
        if busy.contains(video_id) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = entry.path();
        let mut removed_here = false;
        if let Ok(files) = std::fs::read_dir(&dir) {
            for file in files.flatten() {
                let name = file.file_name();
                let is_source = name.to_str().is_some_and(|n| {
                    n == "source" || (n.starts_with("source.") && n.ends_with(".part"))
                });
                if !is_source {
                    continue;
                }
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                if meta.modified().is_ok_and(|m| stale(m, now, keep))
                    && std::fs::remove_file(file.path()).is_ok()
                {
                    swept.files += 1;
                    swept.bytes += meta.len();
                    removed_here = true;
                }
            }
        }
        // Removing a file touches the directory, so one emptied just now goes now; an empty
        // one (the local store's) once it too has been left for `keep`. `remove_dir` refuses
        // a directory that is not empty: a running task's outputs keep theirs.
        let dir_stale = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .is_ok_and(|m| stale(m, now, keep));
        if (removed_here || dir_stale) && std::fs::remove_dir(&dir).is_ok() {
            swept.dirs += 1;
        }
    }
    Ok(swept)
}

/// Mark the source copy at `path` as used now (its modification time), so that [`sweep`]
/// keeps it for another [`SOURCE_KEEP`].
///
/// Errors: the file cannot be opened for writing or its time cannot be set.
pub fn touch(path: &Path) -> io::Result<()> {
    set_last_use(path, SystemTime::now())
}

/// Record `at` as the last use of the file at `path` (its modification time, which [`sweep`]
/// reads). [`touch`] is this at the present; tests age a file with it.
///
/// Errors: the file cannot be opened for writing or its time cannot be set.
pub fn set_last_use(path: &Path, at: SystemTime) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_modified(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = SOURCE_KEEP;

    fn file(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn staleness_is_measured_from_the_last_modification_and_a_future_time_is_fresh() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!stale(t, t + KEEP - Duration::from_secs(1), KEEP));
        assert!(stale(t, t + KEEP, KEEP));
        assert!(!stale(t + Duration::from_secs(5), t, KEEP));
    }

    /// Sources untouched for `keep` go with their directories; a busy video, a fresh source, a
    /// running task's output directory and anything that is not a source stay.
    #[test]
    fn the_sweep_removes_only_sources_left_for_keep_and_the_directories_they_leave_empty() {
        let scratch = tempfile::tempdir().unwrap();
        let s = scratch.path();
        file(&s.join("old/source"), 1000);
        file(&s.join("partial/source.42.part"), 300);
        file(&s.join("busy/source"), 50);
        file(&s.join("running/source"), 70);
        file(&s.join("running/720p-1-0000abcd/00001.m4s"), 10);
        file(&s.join("other/notes.txt"), 5);
        std::fs::create_dir_all(s.join("empty")).unwrap();
        file(&s.join("stray-file"), 1);
        let busy: HashSet<String> = ["busy".to_string()].into();

        // Now: everything was just written, so nothing goes.
        let now = SystemTime::now();
        assert_eq!(sweep(s, &busy, now, KEEP).unwrap(), Swept::default());
        assert!(s.join("old/source").exists() && s.join("empty").exists());

        // `keep` later.
        let later = now + KEEP + Duration::from_secs(1);
        let swept = sweep(s, &busy, later, KEEP).unwrap();
        assert_eq!(
            swept,
            Swept {
                files: 3,
                bytes: 1000 + 300 + 70,
                dirs: 3
            }
        );
        assert!(!s.join("old").exists());
        assert!(!s.join("partial").exists());
        assert!(!s.join("empty").exists());
        assert!(
            s.join("busy/source").exists(),
            "a busy video keeps its source"
        );
        assert!(!s.join("running/source").exists());
        assert!(
            s.join("running/720p-1-0000abcd/00001.m4s").exists(),
            "a task's outputs stay, and so does its video's directory"
        );
        assert!(s.join("other/notes.txt").exists());
        assert!(s.join("stray-file").exists());
    }

    #[test]
    fn a_touched_source_is_kept_for_another_keep() {
        let scratch = tempfile::tempdir().unwrap();
        let src = scratch.path().join("v/source");
        file(&src, 10);
        let old = SystemTime::now() - KEEP - Duration::from_secs(60);
        set_last_use(&src, old).unwrap();
        let none = HashSet::new();
        touch(&src).unwrap();
        let swept = sweep(scratch.path(), &none, SystemTime::now(), KEEP).unwrap();
        assert_eq!(swept, Swept::default());
        assert!(src.exists());
        // Without the touch it would have gone.
        set_last_use(&src, old).unwrap();
        let swept = sweep(scratch.path(), &none, SystemTime::now(), KEEP).unwrap();
        assert_eq!(swept.files, 1);
        assert!(!src.exists());
    }
}
