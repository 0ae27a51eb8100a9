//! Ingest: turn received bytes into a video. The one path shared by `POST /upload` and
//! completed resumable (tus) uploads, so both behave alike:
//!
//! 1. The `video_id` is the content address of the bytes ([`crate::model::video_id`]).
//! 2. A video that already has a record is a duplicate: the staged bytes are dropped and the
//!    existing id is the answer (no new processing; an interrupted video is re-ensured). Bytes
//!    staged at `sources/{video_id}` itself (a joined resumable upload) are never dropped:
//!    that object is the existing video's source too (issue 9: deleting it failed the video
//!    that an identical upload had created a moment before).
//! 3. Otherwise the staged object moves to `sources/{video_id}` and the record is created with
//!    create-if-absent: of two identical uploads racing, exactly one creates it and starts the
//!    job; the other is answered as a duplicate.
//!
//! [`Ingest::existing`] answers step 2 from a declared SHA-256 alone: dedupe before any
//! transfer.
//!
//! Storage and the event log only: starting the processing of an [`Accepted`] video that
//! [`Accepted::needs_processing`] is the caller's (`actors::node::ensure_video`), so this
//! module knows nothing of actors.

use crate::model::{video_id, VideoRecord};
use crate::storage::events::{EventLog, NewEvent};
use crate::storage::{keys, Storage, StorageError};

/// What ingesting needs: the store, the node's event log and the processing profile (part of
/// the content address).
#[derive(Clone, Copy)]
pub struct Ingest<'a> {
    /// The object store.
    pub storage: &'a Storage,
    /// The node's event log (`upload_received`, `duplicate_upload`).
    pub events: &'a EventLog,
    /// The processing profile name.
    pub profile: &'a str,
}

/// Bytes stored under a staging key, with what was learnt while receiving them.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The staging object (`uploads/direct/{token}` or `uploads/{upload_id}/...`), or
    /// `sources/{video_id}` itself when the bytes were written there directly.
    pub key: String,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Size, bytes.
    pub bytes: u64,
    /// The client's file name, if any (informational).
    pub filename: Option<String>,
}

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The video.
    pub video_id: String,
    /// Its lifecycle state now (`uploaded` for a new video).
    pub state: String,
    /// The bytes were already a video: nothing new is processed.
    pub duplicate: bool,
    /// The video is not terminal (`uploaded` or `processing`): the caller makes sure its home
    /// processes it (idempotent; never a second job).
    pub needs_processing: bool,
}

/// Why ingesting failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The object store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The node is shutting down (the video supervisor is gone).
    #[error("{0}")]
    Unavailable(String),
}

impl Ingest<'_> {
    /// The video the bytes with SHA-256 `sha256` (lowercase hex) already are, if any: answered
    /// without a transfer.
    ///
    /// Errors: the object store failed.
    pub async fn existing(&self, sha256: &str) -> Result<Option<Accepted>, IngestError> {
        let id = video_id(sha256, self.profile);
        match self.storage.load_record(&id).await? {
            Some(record) => Ok(Some(
                self.duplicate(&id, record.state.as_str(), "declared sha256")
                    .await,
            )),
            None => Ok(None),
        }
    }

    /// Move `staged` to its content address and create the record once (module doc).
    ///
    /// Errors: the object store failed.
    pub async fn accept(&self, staged: Staged) -> Result<Accepted, IngestError> {
        let storage = self.storage;
        let id = video_id(&staged.sha256, self.profile);
        let at_source = staged.key == keys::source(&id);
        if let Some(existing) = storage.load_record(&id).await? {
            if !at_source {
                let _ = storage.delete(&staged.key).await;
            }
            return Ok(self
                .duplicate(&id, existing.state.as_str(), "same bytes")
                .await);
        }
        if at_source {
            // Written straight to its content address (a joined resumable upload).
        } else if storage.exists(&keys::source(&id)).await? {
            let _ = storage.delete(&staged.key).await;
        } else {
            storage.rename(&staged.key, &keys::source(&id)).await?;
        }
        // Index first: a crash between the two leaves a marker without a record (skipped by
        // the reconcile loop), never an unfinished video the reconcile loop cannot find.
        storage.mark_active(&id).await?;
        let record = VideoRecord::uploaded(
            id.clone(),
            staged.sha256.clone(),
            staged.bytes,
            self.profile.to_string(),
            staged.filename,
        );
        if !storage.create_record(&record).await? {
            let state = storage
                .load_record(&id)
                .await?
                .map(|r| r.state.as_str())
                .unwrap_or("uploaded");
            return Ok(self.duplicate(&id, state, "same bytes").await);
        }
        self.events
            .append(
                NewEvent::video(&id, "upload_received")
                    .outcome("uploaded")
                    .detail(format!("{} bytes, sha256 {}", staged.bytes, staged.sha256)),
            )
            .await;
        // The caller hands it to the video's home node; a failed hand-over is retried by the
        // home's reconcile loop, which finds every unfinished video.
        Ok(Accepted {
            video_id: id,
            state: "uploaded".into(),
            duplicate: false,
            needs_processing: true,
        })
    }

    async fn duplicate(&self, id: &str, state: &str, how: &str) -> Accepted {
        self.events
            .append(
                NewEvent::video(id, "duplicate_upload")
                    .outcome(state)
                    .detail(format!("no new processing ({how})")),
            )
            .await;
        Accepted {
            video_id: id.to_string(),
            state: state.to_string(),
            duplicate: true,
            // An interrupted video is made sure of (idempotent, never a second job).
            needs_processing: state == "uploaded" || state == "processing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageLocation;
    use crate::model::VideoState;

    /// The tus/PUT race of issue 9, without the timing: a resumable upload joined the same
    /// bytes straight into `sources/{id}` while an identical upload created the record. The
    /// duplicate answer must leave that source in place.
    #[tokio::test]
    async fn a_duplicate_joined_at_the_source_keeps_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageLocation::Local(dir.path().join("objects"))).unwrap();
        let events = EventLog::open(&dir.path().join("events.sqlite"), "n1").unwrap();
        let ingest = Ingest {
            storage: &storage,
            events: &events,
            profile: "default",
        };
        let sha = "ab".repeat(32);
        let id = video_id(&sha, "default");
        let mut record = VideoRecord::uploaded(id.clone(), sha.clone(), 5, "default".into(), None);
        record.state = VideoState::Ready;
        assert!(storage.create_record(&record).await.unwrap());
        storage
            .put(&keys::source(&id), bytes::Bytes::from_static(b"video"))
            .await
            .unwrap();
        let staged = |key: String| Staged {
            key,
            sha256: sha.clone(),
            bytes: 5,
            filename: None,
        };
        let a = ingest.accept(staged(keys::source(&id))).await.unwrap();
        assert!(a.duplicate && a.state == "ready", "{a:?}");
        assert!(!a.needs_processing, "a ready video is not processed again");
        assert!(
            storage.exists(&keys::source(&id)).await.unwrap(),
            "the existing video's source is still there"
        );
        // A staging copy elsewhere is dropped as before.
        let other = "uploads/direct/x".to_string();
        storage
            .put(&other, bytes::Bytes::from_static(b"video"))
            .await
            .unwrap();
        ingest.accept(staged(other.clone())).await.unwrap();
        assert!(!storage.exists(&other).await.unwrap());
        assert!(storage.exists(&keys::source(&id)).await.unwrap());
    }
}
