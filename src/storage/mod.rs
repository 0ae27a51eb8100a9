//! Storage: the object store (the shared system of record) and node-local SQLite (the event
//! log). The only module that names `object_store` or `rusqlite`; it owns the key layout
//! ([`keys`]).

pub mod events;
pub mod keys;
pub mod playback;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, WriteMultipart};

use crate::config::StorageLocation;
use crate::model::VideoRecord;

/// Storage errors, by what a caller does about them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// No object at that key.
    #[error("not found: {0}")]
    NotFound(String),
    /// The object store failed (I/O, network, permissions). Usually worth a retry.
    #[error("object store error: {0}")]
    Backend(String),
    /// A stored object could not be decoded.
    #[error("corrupt object {key}: {message}")]
    Corrupt {
        /// The key read.
        key: String,
        /// What was wrong.
        message: String,
    },
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => Self::NotFound(path),
            other => Self::Backend(other.to_string()),
        }
    }
}

/// A stored object with the facts HTTP needs.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes (shared, never copied).
    pub bytes: Bytes,
    /// The store's entity tag, when it has one.
    pub e_tag: Option<String>,
}

/// Handle on the object store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// For the local backend: the root directory, so a local file can be handed to ffmpeg
    /// without a copy.
    local: Option<Arc<LocalFileSystem>>,
}

fn path(key: &str) -> ObjectPath {
    ObjectPath::from(key)
}

impl Storage {
    /// Open the store at `location`, creating a local directory when needed.
    ///
    /// Errors: the directory cannot be created.
    pub fn open(location: &StorageLocation) -> Result<Self, StorageError> {
        match location {
            StorageLocation::Memory => Ok(Self::from_store(Arc::new(InMemory::new()))),
            StorageLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StorageError::Backend(format!("cannot create storage directory {dir:?}: {e}"))
                })?;
                let fs = Arc::new(
                    LocalFileSystem::new_with_prefix(dir)
                        .map_err(StorageError::from)?
                        .with_automatic_cleanup(true),
                );
                Ok(Self {
                    store: fs.clone(),
                    local: Some(fs),
                })
            }
        }
    }

    /// Wrap any object store (tests wrap one to count or slow reads).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, local: None }
    }

    /// Read a whole object. `Ok(None)` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        match self.store.get(&path(key)).await {
            Ok(r) => {
                let e_tag = r.meta.e_tag.clone();
                let bytes = r.bytes().await?;
                Ok(Some(Object { bytes, e_tag }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.store.head(&path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Write an object, replacing any previous one (atomic: readers see old or new bytes).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store.put(&path(key), PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Write an object only if absent. `Ok(false)` when it already existed.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        match self
            .store
            .put_opts(&path(key), PutPayload::from(bytes), PutMode::Create.into())
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete an object; a missing one is not an error (the backends disagree on this).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Move an object (a rename on the local disk, copy + delete elsewhere).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.store.rename(&path(from), &path(to)).await?;
        Ok(())
    }

    /// Start a streaming write of a large object: parts are uploaded as they fill, so memory
    /// stays bounded whatever the object's size. Finish with [`WriteMultipart::finish`].
    pub async fn writer(&self, key: &str) -> Result<WriteMultipart, StorageError> {
        let upload = self.store.put_multipart(&path(key)).await?;
        Ok(WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024))
    }

    /// Upload a local file (segments: small).
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<u64, StorageError> {
        let bytes = tokio::fs::read(file)
            .await
            .map_err(|e| StorageError::Backend(format!("cannot read {file:?}: {e}")))?;
        let n = bytes.len() as u64;
        self.put(key, Bytes::from(bytes)).await?;
        Ok(n)
    }

    /// A local path to the source of `video_id` that ffmpeg can read: the stored file itself on
    /// the local backend, else a copy downloaded once into `scratch`.
    pub async fn source_path(
        &self,
        video_id: &str,
        scratch: &Path,
    ) -> Result<PathBuf, StorageError> {
        let key = keys::source(video_id);
        if let Some(fs) = &self.local {
            let p = fs.path_to_filesystem(&path(&key))?;
            if tokio::fs::metadata(&p).await.is_ok() {
                return Ok(p);
            }
            return Err(StorageError::NotFound(key));
        }
        let dir = scratch.join(video_id);
        let target = dir.join("source");
        if tokio::fs::metadata(&target).await.is_ok() {
            return Ok(target);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StorageError::Backend(format!("cannot create {dir:?}: {e}")))?;
        let part = dir.join(format!("source.{}.part", rand::random::<u64>()));
        let io = |e: std::io::Error| StorageError::Backend(format!("writing {part:?}: {e}"));
        let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
        let mut stream = self.store.get(&path(&key)).await?.into_stream();
        while let Some(chunk) = stream.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?)
                .await
                .map_err(io)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(io)?;
        tokio::fs::rename(&part, &target).await.map_err(io)?;
        Ok(target)
    }

    /// Ids of every video that has a record (`videos/*/`).
    pub async fn list_video_ids(&self) -> Result<Vec<String>, StorageError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&path("videos")))
            .await?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|id| keys::valid_video_id(id))
            .collect())
    }

    /// Read a video record. `Ok(None)` when the video is unknown.
    pub async fn load_record(&self, video_id: &str) -> Result<Option<VideoRecord>, StorageError> {
        let key = keys::record(video_id);
        match self.get(&key).await? {
            None => Ok(None),
            Some(o) => {
                serde_json::from_slice(&o.bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt {
                        key,
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Create a record if none exists (`PutMode::Create`: two identical uploads race safely).
    /// `Ok(false)` when one already existed.
    pub async fn create_record(&self, record: &VideoRecord) -> Result<bool, StorageError> {
        self.put_if_absent(&keys::record(&record.video_id), json_bytes(record))
            .await
    }

    /// Replace a record (only its owner, the `VideoActor`, calls this).
    pub async fn save_record(&self, record: &VideoRecord) -> Result<(), StorageError> {
        self.put(&keys::record(&record.video_id), json_bytes(record))
            .await
    }

    /// Read and decode a JSON object. `Ok(None)` when absent.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(o) => {
                serde_json::from_slice(&o.bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt {
                        key: key.to_string(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Encode and write a JSON object.
    pub async fn put_json<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        self.put(key, json_bytes(value)).await
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // Serialising plain data structs cannot fail.
    Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conformance(s: Storage) {
        assert!(s.get("a/b").await.unwrap().is_none());
        s.put("a/b", Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(&s.get("a/b").await.unwrap().unwrap().bytes[..], b"one");
        assert!(!s
            .put_if_absent("a/b", Bytes::from_static(b"two"))
            .await
            .unwrap());
        assert_eq!(&s.get("a/b").await.unwrap().unwrap().bytes[..], b"one");
        assert!(s
            .put_if_absent("a/c", Bytes::from_static(b"two"))
            .await
            .unwrap());
        let mut w = s.writer("big/x").await.unwrap();
        for _ in 0..3 {
            w.write(&[7u8; 1000]);
        }
        w.finish().await.unwrap();
        assert_eq!(s.get("big/x").await.unwrap().unwrap().bytes.len(), 3000);
        s.rename("big/x", "big/y").await.unwrap();
        assert!(!s.exists("big/x").await.unwrap() && s.exists("big/y").await.unwrap());
        s.delete("big/y").await.unwrap();
        s.delete("big/y").await.unwrap();
        assert!(!s.exists("big/y").await.unwrap());
        let id = "0123456789abcdef0123456789abcdef";
        let rec = VideoRecord::uploaded(id.into(), "00".into(), 3, "default".into(), None);
        assert!(s.create_record(&rec).await.unwrap());
        assert!(!s.create_record(&rec).await.unwrap());
        assert_eq!(s.load_record(id).await.unwrap().unwrap(), rec);
        assert_eq!(s.list_video_ids().await.unwrap(), vec![id.to_string()]);
    }

    #[tokio::test]
    async fn in_memory_store_conforms() {
        conformance(Storage::open(&StorageLocation::Memory).unwrap()).await;
    }

    #[tokio::test]
    async fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance(Storage::open(&StorageLocation::Local(dir.path().into())).unwrap()).await;
    }
}
