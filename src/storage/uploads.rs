//! The durable state of a resumable (tus) upload: `uploads/{upload_id}/info.json` plus its part
//! objects `uploads/{upload_id}/{offset:020}` (layout in [`super::keys`]).
//!
//! The offset a client is told is always the offset stored here, so a node that restarts (or
//! another node that takes the upload over) resumes exactly where the stored parts end.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{keys, remove_partial_files_below, Storage, StorageError, Sweep};

/// One stored part: bytes `offset .. offset + len` of the upload, at
/// [`Part::key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// First byte of the upload this part holds.
    pub offset: u64,
    /// Bytes in the part.
    pub len: u64,
    /// The `PATCH` that wrote it (16 hex digits), naming its object; `None` in uploads
    /// stored before writers were named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

impl Part {
    /// The part's object ([`keys::upload_part_of`]).
    pub fn key(&self, upload_id: &str) -> String {
        keys::upload_part_of(upload_id, self.offset, self.writer.as_deref())
    }
}

/// `uploads/{id}/info.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The upload id (`{node}.{hex}`).
    pub id: String,
    /// Declared total size, bytes (`Upload-Length`).
    pub length: u64,
    /// Bytes durably stored: the sum of `parts`, which are contiguous from 0.
    pub offset: u64,
    /// The stored parts, in order.
    pub parts: Vec<Part>,
    /// `Upload-Metadata` exactly as the client sent it (echoed on `HEAD`, tus 1.0.0 "Creation").
    #[serde(default)]
    pub raw_metadata: Option<String>,
    /// Metadata `filename`, decoded.
    #[serde(default)]
    pub filename: Option<String>,
    /// Metadata `filetype`, decoded.
    #[serde(default)]
    pub filetype: Option<String>,
    /// Metadata `sha256`: the declared SHA-256 of the whole file, lowercase hex; checked on
    /// completion.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The first bytes were sniffed and look like a video container (or are left to ffprobe).
    #[serde(default)]
    pub sniffed: bool,
    /// When the upload was created, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// When it expires, milliseconds since the Unix epoch: `upload_expiry_seconds` after the
    /// last stored bytes (sliding).
    pub expires_ms: i64,
    /// Set once complete: the video the bytes became.
    #[serde(default)]
    pub video_id: Option<String>,
    /// Set once complete: the video's state when the upload completed.
    #[serde(default)]
    pub video_state: Option<String>,
    /// Set once complete: the bytes were already a video (nothing new was processed).
    #[serde(default)]
    pub duplicate: bool,
}

impl UploadInfo {
    /// All bytes arrived and were turned into a video.
    pub fn is_complete(&self) -> bool {
        self.video_id.is_some()
    }

    /// For tests: a new, empty upload `id` of `length` bytes named `a.mp4`, expiring in 60 s.
    #[cfg(test)]
    pub fn for_tests(id: &str, length: u64) -> Self {
        let now = crate::model::now_ms();
        Self {
            id: id.to_string(),
            length,
            offset: 0,
            parts: vec![],
            raw_metadata: None,
            filename: Some("a.mp4".into()),
            filetype: None,
            sha256: None,
            sniffed: false,
            created_ms: now,
            expires_ms: now + 60_000,
            video_id: None,
            video_state: None,
            duplicate: false,
        }
    }
}

impl Storage {
    /// Read an upload's state; `Ok(None)` when unknown (never created, terminated or expired).
    pub async fn load_upload(&self, upload_id: &str) -> Result<Option<UploadInfo>, StorageError> {
        self.get_json(&keys::upload_info(upload_id)).await
    }

    /// Write an upload's state (only its `UploadActor` does).
    pub async fn save_upload(&self, info: &UploadInfo) -> Result<(), StorageError> {
        self.put_json(&keys::upload_info(&info.id), info).await
    }

    /// Record `part` (already stored at [`Part::key`]) as the upload's next bytes, if the store
    /// still says they come next: a compare-and-swap of `info.json`
    /// ([`Storage::swap_json`]). Two `PATCH`es at one offset (through two nodes during a ring
    /// change, say) each write their own part object; the store lets exactly one of them
    /// extend the upload, so the bytes the upload holds are always the bytes one writer sent
    /// and hashed (issue 10: "one writer at a time, decided by the store").
    ///
    /// Returns the new state, or `Err(stored)` when the upload no longer continues at
    /// `part.offset` (another writer's part got in first, or it is complete).
    /// Errors: the store fails; [`StorageError::NotFound`]-like `Missing` is reported as
    /// `Ok(Err(None))` (the upload was terminated meanwhile).
    pub async fn append_upload_part(
        &self,
        upload_id: &str,
        part: Part,
        sniffed: bool,
        expires_ms: i64,
    ) -> Result<Result<UploadInfo, Option<UploadInfo>>, StorageError> {
        let swapped = self
            .swap_json(&keys::upload_info(upload_id), move |stored: &UploadInfo| {
                if stored.is_complete()
                    || stored.offset != part.offset
                    || stored.offset + part.len > stored.length
                {
                    return Err(Box::new(stored.clone()));
                }
                let mut new = stored.clone();
                new.offset += part.len;
                new.parts.push(part.clone());
                new.sniffed |= sniffed;
                new.expires_ms = expires_ms;
                Ok(new)
            })
            .await?;
        Ok(match swapped {
            super::Swapped::Written(info) => Ok(info),
            super::Swapped::Refused(stored) => Err(Some(*stored)),
            super::Swapped::Missing => Err(None),
        })
    }

    /// Delete every object of an upload, state last (so a crash half-way leaves a state that
    /// the next sweep deletes again).
    pub async fn delete_upload(&self, upload_id: &str) -> Result<(), StorageError> {
        let info = keys::upload_info(upload_id);
        for (key, _) in self.list(&keys::upload_prefix(upload_id)).await? {
            if key != info {
                self.delete(&key).await?;
            }
        }
        self.delete(&info).await
    }

    /// Ids of every resumable upload in the store (any home node).
    pub async fn list_upload_ids(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_dirs(keys::UPLOADS)
            .await?
            .into_iter()
            .filter(|id| keys::valid_upload_id(id))
            .collect())
    }
}

impl Storage {
    /// Delete what uploads cut short by a crash (`kill -9`, a power cut) left under `uploads/`,
    /// untouched for at least `older_than` (the node passes `limits.upload_expiry_seconds`, the
    /// time a tus upload may rest between `PATCH`es); returns how many files and objects went.
    ///
    /// - A `PUT` body staged whole at `uploads/direct/{token}` whose node died before moving it
    ///   to `sources/`.
    /// - On the local store, the partial file object_store writes a body to until it is whole
    ///   (`{key}#{n}` beside its key, which listings do not show): a crash leaves it holding
    ///   every byte received so far, a `PUT`'s whole body or a tus `PATCH`'s part. Nothing else
    ///   ever removed these: each crash during uploads kept their bytes on the disk for good.
    ///
    /// An S3 bucket keeps a cut body as an incomplete multipart upload, which only the bucket's
    /// lifecycle rule removes (`AbortIncompleteMultipartUpload`; docs/uploads.md).
    ///
    /// Errors: the store cannot be listed, or an object cannot be deleted.
    pub async fn sweep_cut_uploads(&self, older_than: Duration) -> Result<usize, StorageError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut gone = 0;
        for (key, modified) in self.list_modified(keys::DIRECT_UPLOADS).await? {
            if modified <= cutoff {
                self.delete(&key).await?;
                gone += 1;
            }
        }
        if let Some(fs) = &self.local {
            let root = fs.path_to_filesystem(&super::path(keys::UPLOADS))?;
            gone += tokio::task::spawn_blocking(move || {
                // `uploads/` holds no files of its own; `direct/` stays when emptied, while
                // an upload's directory holds its info.json while the upload lives, so only
                // one emptied here (or left empty) goes.
                let direct = root.join("direct");
                let sweep = |dir: &Path| match dir {
                    d if d == root => Sweep::Keep,
                    d if d == direct => Sweep::Files,
                    _ => Sweep::FilesAndDir,
                };
                remove_partial_files_below(&root, Some(cutoff), &sweep)
            })
            .await
            .map_err(|e| StorageError::Backend(format!("upload sweep: {e}")))?;
        }
        Ok(gone)
    }
}

/// Whether a local store's file named `name` is one object_store is still writing a body to
/// (`{name}#{n}`, n decimal): its `LocalFileSystem` stages every write that way and renames
/// the file when the body is whole.
pub fn is_partial_file(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(key, n)| {
        !key.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn partial_files_are_the_ones_object_store_stages() {
        assert!(is_partial_file("0123abcd#1"));
        assert!(is_partial_file("00000000000000004096.0123456789abcdef#17"));
        for name in ["0123abcd", "info.json", "a#", "#1", "a#1x", "a#-1"] {
            assert!(!is_partial_file(name), "{name}");
        }
    }

    #[tokio::test]
    async fn a_sweep_takes_what_crashes_left_and_only_what_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            Storage::open(&crate::config::StorageLocation::Local(dir.path().into())).unwrap();
        let uploads = dir.path().join("uploads");
        let old = SystemTime::now() - Duration::from_secs(3600);
        let file = |rel: &str, modified: Option<SystemTime>| {
            let p = uploads.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"bytes").unwrap();
            if let Some(t) = modified {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
            p
        };
        // Left by crashes an hour ago: a PUT's partial body, a PUT's body never moved, a
        // PATCH's partial part in an upload that is gone.
        let cut_put = file("direct/aaaa#1", Some(old));
        let unmoved = file("direct/bbbb", Some(old));
        let cut_part = file(
            "gone.0123/00000000000000000000.0123456789abcdef#2",
            Some(old),
        );
        // Being written now, and a live upload's state.
        let live_put = file("direct/cccc#1", None);
        let live_part = file("live.4567/00000000000000000000.0123456789abcdef#1", None);
        let info = file("live.4567/info.json", Some(old));

        let gone = storage
            .sweep_cut_uploads(Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(gone, 3);
        for p in [&cut_put, &unmoved, &cut_part] {
            assert!(!p.exists(), "{p:?} should be gone");
        }
        assert!(
            !uploads.join("gone.0123").exists(),
            "its emptied directory too"
        );
        for p in [&live_put, &live_part, &info] {
            assert!(p.exists(), "{p:?} should stay");
        }
        assert!(uploads.join("direct").is_dir());
    }
}
