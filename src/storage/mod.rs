//! Storage: the object store (the shared system of record) and node-local SQLite (the event
//! log). The only module that names `object_store` or `rusqlite`; it owns the key layout
//! ([`keys`]).

pub mod conformance;
pub mod data_dir;
pub mod events;
pub mod file_bytes;
pub mod keys;
pub mod lease;
pub mod part_writer;
pub mod playback;
pub mod scratch;
pub mod uploads;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

pub use part_writer::{PartWriter, Spool, WriteBudget};

use crate::config::StorageLocation;
use crate::media::playlist::RenditionOutput;
use crate::model::{VideoRecord, VideoState};

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
    /// The object store has no space left (`ENOSPC`, or the user's quota: `EDQUOT`): a retry
    /// fails the same way until someone frees space.
    #[error("object store full: {0}")]
    Full(String),
    /// The node's memory for writes on their way to the store ([`WriteBudget`]) stayed spent
    /// for the budget's wait: a retry shortly may find room.
    #[error("node busy: {0}")]
    Busy(String),
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
            other if out_of_space(&other) => Self::Full(other.to_string()),
            other => Self::Backend(other.to_string()),
        }
    }
}

/// Whether `e`, or an error behind it, is the file system saying it has no space left
/// (`ENOSPC`) or the user's quota is spent (`EDQUOT`). The local store wraps the I/O error
/// in its own (`object_store::local`'s "Unable to copy data to file").
pub fn out_of_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
            ) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// A stored object with the facts HTTP needs.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes (shared, never copied).
    pub bytes: Bytes,
    /// The store's entity tag, when it has one (shared: a cached object's answers all carry
    /// it, and copying it was an allocation per cache hit).
    pub e_tag: Option<Arc<str>>,
}

/// Handle on the object store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// How long a small request (a read, a write of one object, a listing) waits for the
    /// store before it fails as unreachable ([`Storage::with_answer_timeout`]).
    answer_timeout: std::time::Duration,
    /// For the local backend: the root directory, so a local file can be handed to ffmpeg
    /// without a copy.
    local: Option<Arc<LocalFileSystem>>,
    /// Whether listings come in key order (S3's `ListObjectsV2` and `InMemory` do; a local
    /// directory walk and a wrapped store may not): a page of the catalog then needs only its
    /// own entries ([`Storage::catalog_page`]).
    sorted_listing: bool,
    /// What [`Storage::writer`]s may hold in memory, all together.
    writes: WriteBudget,
    /// The size of a writer's parts, bytes.
    part_bytes: usize,
    /// Whether the store takes a part shorter than that before the last: the local store
    /// writes each part at its offset at once, whatever its size; S3 wants at least 5 MiB,
    /// and other stores are taken to want the same.
    short_parts: bool,
    /// Where writers' aged parts wait on disk where parts must be whole
    /// ([`Storage::with_spool`]); none by default.
    spool: Option<part_writer::Spool>,
}

/// Catalog shards a local-store page lists at once ([`Storage::catalog_page`]): the listings
/// run on the blocking pool, and a page of a small library reads many shards of a few ids.
const SHARDS_AT_ONCE: usize = 8;

/// [`Storage::with_answer_timeout`] unless configured: 10 s.
pub const DEFAULT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn path(key: &str) -> ObjectPath {
    ObjectPath::from(key)
}

impl Storage {
    /// Open the store at `location`, creating a local directory when needed.
    ///
    /// Errors: the directory cannot be created.
    pub fn open(location: &StorageLocation) -> Result<Self, StorageError> {
        match location {
            StorageLocation::Memory => Ok(Self {
                sorted_listing: true,
                ..Self::from_store(Arc::new(InMemory::new()))
            }),
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
                    local: Some(fs.clone()),
                    part_bytes: part_writer::LOCAL_PART_BYTES,
                    short_parts: true,
                    ..Self::from_store(fs)
                })
            }
            StorageLocation::S3(s3) => {
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region);
                // First, because it replaces the client options that `with_allow_http` below
                // sets. Chosen, not defaults (object_store retries for up to 3 minutes): a
                // store that does not answer shows as a quick 503 to clients, who retry,
                // rather than as a request hanging for minutes (issue 10). Connect within 2 s;
                // a request (a whole part of a multipart upload included) within 60 s;
                // retries of transient failures for at most 4 s in all, from 100 ms.
                b = b
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_connect_timeout(std::time::Duration::from_secs(2))
                            .with_timeout(std::time::Duration::from_secs(60)),
                    )
                    .with_retry(object_store::RetryConfig {
                        backoff: object_store::BackoffConfig {
                            init_backoff: std::time::Duration::from_millis(100),
                            max_backoff: std::time::Duration::from_secs(1),
                            base: 2.0,
                        },
                        max_retries: 3,
                        retry_timeout: std::time::Duration::from_secs(4),
                    });
                if let Some(endpoint) = &s3.endpoint {
                    // S3-compatible servers (MinIO, SeaweedFS): path-style requests, plain HTTP
                    // allowed for a loopback test server.
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                match (&s3.access_key_id, &s3.secret_access_key) {
                    (Some(id), Some(secret)) => {
                        b = b
                            .with_access_key_id(id)
                            .with_secret_access_key(secret.expose());
                        if let Some(token) = &s3.session_token {
                            b = b.with_token(token.expose());
                        }
                    }
                    _ => b = b.with_skip_signature(true),
                }
                // Create-if-absent (`PutMode::Create`) is sent as `If-None-Match: *`
                // (object_store's default `S3ConditionalPut::ETagMatch`), which AWS, MinIO
                // and SeaweedFS honour.
                let store = b.build().map_err(|e| {
                    StorageError::Backend(format!("cannot configure s3://{}: {e}", s3.bucket))
                })?;
                Ok(Self {
                    sorted_listing: true,
                    ..Self::from_store(Arc::new(store))
                })
            }
        }
    }

    /// Whether the store answers now: one `HEAD` of the catalog's built marker (present or
    /// not, an answer is an answer), bounded by `timeout`. What `GET /ready` asks (readiness
    /// for a load balancer); its cost does not grow with the library.
    pub async fn reachable(&self, timeout: std::time::Duration) -> bool {
        let marker = path(keys::CATALOG_BUILT);
        let probe = self.store.head(&marker);
        matches!(
            tokio::time::timeout(timeout, probe).await,
            Ok(Ok(_) | Err(object_store::Error::NotFound { .. }))
        )
    }

    /// Wrap any object store (tests wrap one to count or slow reads).
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            local: None,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
            sorted_listing: false,
            // Unless told otherwise (`with_write_budget`), the budget a node's default
            // `[limits]` give it.
            writes: {
                let limits = crate::config::Limits::default();
                WriteBudget::new(limits.upload_buffer_bytes(), limits.body_idle())
            },
            part_bytes: part_writer::REMOTE_PART_BYTES,
            short_parts: false,
            spool: None,
        }
    }

    /// Fail small requests (`get`, `exists`, `put`, `put_if_absent`, `delete`, `get_range`,
    /// `list`, `list_dirs`) that the store has not answered within `timeout`, as
    /// [`StorageError::Backend`]: a hung store (one that accepts connections and never
    /// answers) becomes a `503` in bounded time instead of holding the client for the S3
    /// client's 60 s (`limits.store_answer_seconds`, issue 10). Streams, multipart writers and
    /// renames (a server-side copy of a large source) are not bounded by it.
    pub fn with_answer_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.answer_timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Backend(format!(
                "the object store did not answer within {} s",
                self.answer_timeout.as_secs_f64()
            ))),
        }
    }

    /// Read a whole object. `Ok(None)` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        self.read(key, false).await
    }

    /// Read a whole object to serve it: as [`Storage::get`], except that on the local store the
    /// bytes are listed with the file they were read from ([`file_bytes`]), so a connection can
    /// send them with `sendfile(2)`. For segments of ready videos (immutable); other stores
    /// answer as [`Storage::get`].
    pub async fn get_servable(&self, key: &str) -> Result<Option<Object>, StorageError> {
        self.read(key, self.local.is_some()).await
    }

    /// Read a whole object; with `list_files`, one the store hands over as a local file is
    /// read through that file and listed with it ([`file_bytes`]).
    async fn read(&self, key: &str, list_files: bool) -> Result<Option<Object>, StorageError> {
        self.bounded(async {
            let r = match self.store.get(&path(key)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let e_tag = r.meta.e_tag.as_deref().map(Arc::from);
            let size = r.meta.size;
            let bytes = match r.payload {
                object_store::GetResultPayload::File(file, _) if list_files => {
                    tokio::task::spawn_blocking(move || read_listed(file, size))
                        .await
                        .map_err(|e| StorageError::Backend(format!("read task failed: {e}")))?
                        .map_err(|e| StorageError::Backend(format!("cannot read {key}: {e}")))?
                }
                payload => object_store::GetResult { payload, ..r }.bytes().await?,
            };
            Ok(Some(Object { bytes, e_tag }))
        })
        .await
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.bounded(async {
            match self.store.head(&path(key)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Write an object, replacing any previous one (atomic: readers see old or new bytes).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.bounded(async {
            self.store.put(&path(key), PutPayload::from(bytes)).await?;
            Ok(())
        })
        .await
    }

    /// Write an object only if absent. `Ok(false)` when it already existed.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        self.bounded(async {
            match self
                .store
                .put_opts(&path(key), PutPayload::from(bytes), PutMode::Create.into())
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Delete an object; a missing one is not an error (the backends disagree on this).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.bounded(async {
            match self.store.delete(&path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Delete every object under `prefix` (best effort for cleanup; returns how many).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let objects: Vec<_> = self
            .store
            .list(Some(&path(prefix)))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for o in &objects {
            self.delete(o.as_ref()).await?;
        }
        Ok(objects.len())
    }

    /// Download an object into a local file (streamed; for intermediates that ffmpeg reads).
    pub async fn download(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        self.download_with(key, file, &mut |_| {}).await
    }

    /// [`Storage::download`], calling `on_bytes` with the bytes written so far after each
    /// chunk (a worker turns that into "still alive" reports).
    pub async fn download_with(
        &self,
        key: &str,
        file: &Path,
        on_bytes: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), StorageError> {
        let io = |e: std::io::Error| StorageError::Backend(format!("writing {file:?}: {e}"));
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut stream = self.store.get(&path(key)).await?.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                .await
                .map_err(io)?;
            written += chunk.len() as u64;
            on_bytes(written);
        }
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(io)?;
        Ok(())
    }

    /// Move an object (a rename on the local disk, copy + delete elsewhere).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.store.rename(&path(from), &path(to)).await?;
        Ok(())
    }

    /// Start a streaming write of a large object: parts go to the store as they fill, each
    /// taking its room from the node's [`WriteBudget`] first, so memory stays bounded whatever
    /// the object's size and however many are written at once. Finish with
    /// [`PartWriter::finish`].
    ///
    /// Errors: the store refused to start the write.
    pub async fn writer(&self, key: &str) -> Result<PartWriter, StorageError> {
        let upload = self.store.put_multipart(&path(key)).await?;
        Ok(PartWriter::new(
            upload,
            self.part_bytes,
            self.short_parts,
            self.writes.clone(),
            self.spool().cloned(),
        ))
    }

    /// Let writers keep their parts that fill slowly in `spool` where the store wants whole
    /// parts (S3; `storage::part_writer`, a node's `limits.upload_spool_mib`).
    pub fn with_spool(mut self, spool: part_writer::Spool) -> Self {
        self.spool = Some(spool);
        self
    }

    /// The spool [`Storage::writer`]s use: none without one, or where the store takes short
    /// parts (the local store sends aged parts short instead).
    pub fn spool(&self) -> Option<&part_writer::Spool> {
        self.spool.as_ref().filter(|_| !self.short_parts)
    }

    /// Give the writers `budget` to share ([`Storage::writer`]); by default 256 MiB and 30 s.
    pub fn with_write_budget(mut self, budget: WriteBudget) -> Self {
        self.writes = budget;
        self
    }

    /// The budget [`Storage::writer`]s share.
    pub fn write_budget(&self) -> &WriteBudget {
        &self.writes
    }

    /// Writers' parts of `bytes`, sent short when the budget is spent if `short` (tests:
    /// small parts show a budget's effect, on either kind of store).
    #[cfg(test)]
    pub fn with_parts(mut self, bytes: usize, short: bool) -> Self {
        self.part_bytes = bytes;
        self.short_parts = short;
        self
    }

    /// Read `len` bytes from `offset` of an object (HTTP range read on S3).
    pub async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StorageError> {
        self.bounded(async {
            Ok(self
                .store
                .get_range(&path(key), offset..offset + len)
                .await?)
        })
        .await
    }

    /// Stream a whole object in the store's chunks (bounded memory whatever its size).
    pub async fn read_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let r = self.store.get(&path(key)).await?;
        Ok(r.into_stream().map_err(StorageError::from).boxed())
    }

    /// Every object under `prefix` (a `/`-separated key prefix, e.g. `uploads/x`), with its
    /// size in bytes, in no particular order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        self.bounded(async {
            let listed: Vec<_> = self.store.list(Some(&path(prefix))).try_collect().await?;
            Ok(listed
                .into_iter()
                .map(|m| (m.location.to_string(), m.size))
                .collect())
        })
        .await
    }

    /// Every object under `prefix` with its last-modified time (the store's clock; S3 gives
    /// whole seconds), in no particular order. For checks over a video's objects.
    pub async fn list_modified(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>, StorageError> {
        self.bounded(async {
            let listed: Vec<_> = self.store.list(Some(&path(prefix))).try_collect().await?;
            Ok(listed
                .into_iter()
                .map(|m| (m.location.to_string(), m.last_modified.into()))
                .collect())
        })
        .await
    }

    /// The names one level below `prefix` that have objects under them (`videos` lists the
    /// ids of `videos/{id}/...`).
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.bounded(async {
            let listed = self.store.list_with_delimiter(Some(&path(prefix))).await?;
            Ok(listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect())
        })
        .await
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
    /// the local backend, else a copy downloaded once into `scratch/{video_id}/source`, kept
    /// while tasks use it ([`scratch::sweep`]).
    pub async fn source_path(
        &self,
        video_id: &str,
        scratch: &Path,
    ) -> Result<PathBuf, StorageError> {
        self.source_path_with(video_id, scratch, &mut |_| {}).await
    }

    /// [`Storage::source_path`], calling `on_bytes` as a download proceeds.
    pub async fn source_path_with(
        &self,
        video_id: &str,
        scratch: &Path,
        on_bytes: &mut (dyn FnMut(u64) + Send),
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
            // In use again: the scratch sweep keeps it for another `SOURCE_KEEP`.
            let t = target.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || scratch::touch(&t)).await {
                tracing::debug!("cannot mark {target:?} as used: {e}");
            }
            return Ok(target);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StorageError::Backend(format!("cannot create {dir:?}: {e}")))?;
        let part = dir.join(format!("source.{}.part", rand::random::<u64>()));
        self.download_with(&key, &part, on_bytes).await?;
        tokio::fs::rename(&part, &target)
            .await
            .map_err(|e| StorageError::Backend(format!("writing {target:?}: {e}")))?;
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

    /// Ids of the videos marked active (not terminal), from the `active/` index.
    pub async fn list_active_ids(&self) -> Result<Vec<String>, StorageError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&path("active")))
            .await?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .filter(|id| keys::valid_video_id(id))
            .collect())
    }

    /// Mark a video active (before its record is created, so no unfinished video is ever
    /// missing from the index).
    pub async fn mark_active(&self, video_id: &str) -> Result<(), StorageError> {
        self.put(&keys::active(video_id), Bytes::new()).await
    }

    /// Remove a video from the active index (after its record is terminal).
    pub async fn clear_active(&self, video_id: &str) -> Result<(), StorageError> {
        self.delete(&keys::active(video_id)).await
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
    /// `Ok(false)` when one already existed. The video's catalog entry is written first, so
    /// every record is listed by `GET /videos` (an entry whose record a crash kept from being
    /// written is skipped by the listing).
    pub async fn create_record(&self, record: &VideoRecord) -> Result<bool, StorageError> {
        self.put(&keys::catalog(&record.video_id), Bytes::new())
            .await?;
        self.put_if_absent(&keys::record(&record.video_id), json_bytes(record))
            .await
    }

    /// One page of the catalog: up to `limit` video ids after `after` (exclusive), in id
    /// order, and whether more follow. Only the page's part of the catalog is read, so its time
    /// follows `limit`, not the library's size: on a store that lists in key order (S3, in
    /// memory) one listing from `after` (S3's `start-after`), taken lazily; on the local store
    /// the shards from `after`'s on, each a small directory read and sorted, eight at once
    /// and taken in order, until the page is full (see [`keys::catalog`]). No record is read.
    ///
    /// Errors: the store fails or does not answer.
    pub async fn catalog_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StorageError> {
        let is_id = |m: object_store::ObjectMeta| {
            m.location
                .filename()
                .filter(|id| keys::valid_video_id(id))
                .map(str::to_string)
        };
        let after_ok = |id: &String| after.is_none_or(|a| id.as_str() > a);
        let mut ids: Vec<String> = Vec::new();
        if self.sorted_listing {
            let prefix = path(keys::CATALOG);
            let listing = match after {
                Some(a) => self
                    .store
                    .list_with_offset(Some(&prefix), &path(&keys::catalog(a))),
                None => self.store.list(Some(&prefix)),
            };
            ids = self
                .bounded(
                    listing
                        .map_err(StorageError::from)
                        .try_filter_map(|m| async move { Ok(is_id(m)) })
                        .try_filter(|id| std::future::ready(after_ok(id)))
                        .take(limit + 1)
                        .try_collect(),
                )
                .await?;
        } else {
            let first = after
                .and_then(|a| a.get(..2))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            // The shards that exist (one directory read), from `after`'s on.
            let shards = self
                .bounded(async {
                    Ok(self
                        .store
                        .list_with_delimiter(Some(&path(keys::CATALOG)))
                        .await?)
                })
                .await?;
            let mut shards: Vec<u8> = shards
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename())
                .filter(|h| h.len() == 2)
                .filter_map(|h| u8::from_str_radix(h, 16).ok())
                .filter(|s| *s >= first)
                .collect();
            shards.sort_unstable();
            // A few shards listed at once, taken in order: a small library spreads a page
            // over up to 256 shards of a few ids each, and one after another they took
            // 80 directory reads in turn for 100 videos.
            let mut listings = futures::stream::iter(shards)
                .map(|shard| {
                    self.bounded(async move {
                        self.store
                            .list(Some(&path(&keys::catalog_shard(shard))))
                            .map_err(StorageError::from)
                            .try_collect::<Vec<_>>()
                            .await
                    })
                })
                .buffered(SHARDS_AT_ONCE);
            while let Some(listed) = listings.next().await {
                let listed = listed?;
                let mut part: Vec<String> = listed
                    .into_iter()
                    .filter_map(is_id)
                    .filter(after_ok)
                    .collect();
                part.sort_unstable();
                ids.extend(part);
                if ids.len() > limit {
                    break;
                }
            }
        }
        ids.truncate(limit + 1);
        let more = ids.len() > limit;
        ids.truncate(limit);
        Ok((ids, more))
    }

    /// Give every stored video a catalog entry, once per store: videos stored before the
    /// catalog existed have none. Skipped when [`keys::CATALOG_BUILT`] exists; written after
    /// the entries, so a node that dies midway leaves the next start to finish. Returns how
    /// many entries were added. Idempotent: nodes starting together may each run it.
    pub async fn build_catalog(&self) -> Result<usize, StorageError> {
        if self.exists(keys::CATALOG_BUILT).await? {
            return Ok(0);
        }
        let mut added = 0;
        for id in self.list_video_ids().await? {
            if self
                .put_if_absent(&keys::catalog(&id), Bytes::new())
                .await?
            {
                added += 1;
            }
        }
        self.put(keys::CATALOG_BUILT, Bytes::new()).await?;
        Ok(added)
    }

    /// Replace a record as its owner, if the store still lets this owner write: a
    /// compare-and-swap that applies [`record_write_decision`] to the stored record and writes
    /// only when it says [`RecordWrite::Written`]. The check and the write are one step the
    /// store enforces, so a writer delayed past a takeover (a pause, object_store's own
    /// retries) cannot land a stale state, and a terminal state is never overwritten
    /// (issue 9). On S3 (and InMemory) the swap is a conditional PUT (`If-Match` on the entity
    /// tag, object_store's `PutMode::Update`), retried while other writers win; on
    /// LocalFileSystem, which has no conditional update, an exclusive lock on
    /// `videos/{id}/record.lock` (released by the OS if the holder dies) around read, check and
    /// an atomic rename: correct for nodes of one machine sharing the directory, which is what
    /// local storage is for.
    ///
    /// Errors: the store fails, the stored record cannot be decoded, or other writers keep
    /// winning the swap (after 16 tries).
    pub async fn save_record_fenced(
        &self,
        record: &VideoRecord,
    ) -> Result<RecordWrite, StorageError> {
        let record = record.clone();
        let id = record.video_id.clone();
        self.swap_record(&id, move |stored| {
            match record_write_decision(stored, &record) {
                RecordWrite::Written => Ok(record.clone()),
                refused => Err(refused),
            }
        })
        .await
    }

    /// Put a `failed` video back to `uploaded` (error cleared) so that it is processed again
    /// from its stored source: the one way out of a terminal state, and only out of `failed`
    /// (`POST /videos/{id}/reprocess`). The same swap as [`Storage::save_record_fenced`];
    /// the epoch is kept, so the next owner's claim supersedes every earlier one.
    ///
    /// Errors: as [`Storage::save_record_fenced`]. A video in another state is
    /// [`RecordWrite::WrongState`], an unknown one [`RecordWrite::Missing`].
    pub async fn reopen_failed_record(&self, video_id: &str) -> Result<RecordWrite, StorageError> {
        self.swap_record(video_id, |stored| {
            if stored.state != VideoState::Failed {
                return Err(RecordWrite::WrongState {
                    stored: stored.state,
                });
            }
            let mut r = stored.clone();
            r.state = VideoState::Uploaded;
            r.error = None;
            r.ready_at = None;
            r.touch();
            Ok(r)
        })
        .await
    }

    /// Compare-and-swap of a video's record: `decide` sees the stored record and returns the
    /// one to write, or why not ([`Storage::swap_json`]).
    async fn swap_record<F>(&self, video_id: &str, decide: F) -> Result<RecordWrite, StorageError>
    where
        F: Fn(&VideoRecord) -> Result<VideoRecord, RecordWrite> + Send + 'static,
    {
        Ok(
            match self.swap_json(&keys::record(video_id), decide).await? {
                Swapped::Written(_) => RecordWrite::Written,
                Swapped::Refused(why) => why,
                Swapped::Missing => RecordWrite::Missing,
            },
        )
    }

    /// Compare-and-swap of a JSON object: `decide` sees the stored value and returns the one to
    /// write, or why not. The check and the write are one step the store enforces: a
    /// conditional PUT (`If-Match` on the entity tag, object_store's `PutMode::Update`) on S3
    /// and InMemory, retried while other writers win; an exclusive lock on a `.lock` file
    /// beside the object (released by the OS if the holder dies) around read, decide and an
    /// atomic rename on LocalFileSystem (correct for nodes of one machine sharing the
    /// directory, which is what local storage is for). An absent object is
    /// [`Swapped::Missing`]: swaps never create.
    ///
    /// Errors: the store fails, the stored value cannot be decoded, or other writers keep
    /// winning (after 16 tries).
    pub async fn swap_json<T, R, F>(
        &self,
        key: &str,
        decide: F,
    ) -> Result<Swapped<T, R>, StorageError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
        R: Send + 'static,
        F: Fn(&T) -> Result<T, R> + Send + 'static,
    {
        if let Some(fs) = &self.local {
            let file = fs.path_to_filesystem(&path(key))?;
            let key = key.to_string();
            return tokio::task::spawn_blocking(move || local_swap(&key, &file, decide))
                .await
                .map_err(|e| StorageError::Backend(format!("swap task: {e}")))?;
        }
        for _ in 0..16 {
            let got = match self.store.get(&path(key)).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(Swapped::Missing),
                Err(e) => return Err(e.into()),
            };
            let version = object_store::UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await?;
            let stored: T = decode_json(key, &bytes)?;
            let new = match decide(&stored) {
                Ok(v) => v,
                Err(refused) => return Ok(Swapped::Refused(refused)),
            };
            match self
                .store
                .put_opts(
                    &path(key),
                    PutPayload::from(json_bytes(&new)),
                    PutMode::Update(version).into(),
                )
                .await
            {
                Ok(_) => return Ok(Swapped::Written(new)),
                // Another writer swapped first: read again and decide again.
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Backend(format!(
            "could not write {key}: other writers kept winning"
        )))
    }

    /// The newest lease of a video: `(epoch, holder node)`, or `None` when never claimed.
    pub async fn current_lease(
        &self,
        video_id: &str,
    ) -> Result<Option<(u64, String)>, StorageError> {
        let Some(v) = self.lease_view(video_id).await? else {
            return Ok(None);
        };
        Ok(Some((v.epoch, self.lease_holder(video_id, v.epoch).await?)))
    }

    /// The newest lease of a video as one listing shows it (epoch, last renewal, released), or
    /// `None` when never claimed.
    pub async fn lease_view(
        &self,
        video_id: &str,
    ) -> Result<Option<lease::LeaseView>, StorageError> {
        let listed = self
            .bounded(async {
                Ok(self
                    .store
                    .list_with_delimiter(Some(&path(&keys::lease_prefix(video_id))))
                    .await?)
            })
            .await?;
        let mut newest: Option<(u64, chrono::DateTime<chrono::Utc>)> = None;
        let mut released = std::collections::HashSet::new();
        for o in &listed.objects {
            let Some(name) = o.location.filename() else {
                continue;
            };
            if let Some(epoch) = name.strip_suffix(keys::LEASE_RELEASED_SUFFIX) {
                if let Ok(e) = epoch.parse::<u64>() {
                    released.insert(e);
                }
            } else if let Ok(e) = name.parse::<u64>() {
                if newest.is_none_or(|(n, _)| e > n) {
                    newest = Some((e, o.last_modified));
                }
            }
        }
        Ok(newest.map(|(epoch, renewed)| lease::LeaseView {
            epoch,
            renewed,
            released: released.contains(&epoch),
        }))
    }

    /// Claim ownership of a video for `node` under the rule of [`lease`]: the next epoch is
    /// created with create-if-absent (works on every backend), and only when there is no lease,
    /// the newest is released or expired (`ttl` plus [`lease::MAX_CLOCK_SKEW`] without a
    /// renewal), or `node` holds it already (a restarted node or video actor). The highest
    /// epoch owns the video; an owner that sees a higher one stands down.
    ///
    /// Returns [`lease::Claim::Claimed`] with the epoch, or [`lease::Claim::Held`] with the
    /// live holder and the time left. Errors: the store fails, or other nodes keep winning the
    /// race (after 8 tries).
    pub async fn claim_lease(
        &self,
        video_id: &str,
        node: &str,
        ttl: std::time::Duration,
    ) -> Result<lease::Claim, StorageError> {
        for _ in 0..8 {
            let view = self.lease_view(video_id).await?;
            if let Some(v) = &view {
                if let Some(left) = lease::held_for(v, chrono::Utc::now(), ttl) {
                    let holder = self.lease_holder(video_id, v.epoch).await?;
                    if holder != node {
                        return Ok(lease::Claim::Held {
                            epoch: v.epoch,
                            holder,
                            expires_in: left,
                        });
                    }
                }
            }
            let next = view.map_or(1, |v| v.epoch + 1);
            let claimed = self
                .put_if_absent(&keys::lease(video_id, next), Bytes::from(node.to_string()))
                .await?;
            if claimed {
                return Ok(lease::Claim::Claimed(next));
            }
        }
        Err(StorageError::Backend(format!(
            "could not claim a lease on video {video_id}: contention"
        )))
    }

    /// The node that claimed `epoch` of a video's lease (empty when the object is gone).
    async fn lease_holder(&self, video_id: &str, epoch: u64) -> Result<String, StorageError> {
        Ok(self
            .get(&keys::lease(video_id, epoch))
            .await?
            .map(|o| String::from_utf8_lossy(&o.bytes).into_owned())
            .unwrap_or_default())
    }

    /// Renew `node`'s lease `epoch` (rewrite it, which moves its `last_modified`). `Ok(false)`,
    /// and nothing written, when a newer epoch exists or the lease was released: the caller has
    /// lost the video. A renewal racing a claim may still land on the superseded epoch; that
    /// changes nothing, since only the newest epoch owns.
    pub async fn renew_lease(
        &self,
        video_id: &str,
        epoch: u64,
        node: &str,
    ) -> Result<bool, StorageError> {
        match self.lease_view(video_id).await? {
            Some(v) if v.epoch == epoch && !v.released => {
                self.put(&keys::lease(video_id, epoch), Bytes::from(node.to_string()))
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Let a lease go (hand-off, stand-down, shutdown, terminal video): another node may claim
    /// the next epoch at once instead of waiting for the lease to expire. Releasing an epoch
    /// that is no longer the newest changes nothing.
    pub async fn release_lease(&self, video_id: &str, epoch: u64) -> Result<(), StorageError> {
        self.put(&keys::lease_released(video_id, epoch), Bytes::new())
            .await
    }

    /// Whether `epoch` is still the newest lease of the video.
    pub async fn lease_holds(&self, video_id: &str, epoch: u64) -> Result<bool, StorageError> {
        Ok(self
            .lease_view(video_id)
            .await?
            .is_none_or(|v| v.epoch == epoch))
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

    /// The outputs chosen for `video_id` (`videos/{id}/outputs.json`), if they were chosen.
    pub async fn chosen_outputs(
        &self,
        video_id: &str,
    ) -> Result<Option<Vec<RenditionOutput>>, StorageError> {
        self.get_json(&keys::outputs_choice(video_id)).await
    }

    /// Choose `outputs` as the video's renditions, unless a choice exists: created only if
    /// absent, so whichever job gets there first decides, once, which attempt directory of
    /// each rendition the video is served from (issue 9). Returns the choice that stands,
    /// `outputs` or the earlier one. Errors: the store failed, or the stored choice is
    /// unreadable or names a directory reel would not write.
    pub async fn choose_outputs(
        &self,
        video_id: &str,
        outputs: &[RenditionOutput],
    ) -> Result<Vec<RenditionOutput>, StorageError> {
        let key = keys::outputs_choice(video_id);
        if self.put_if_absent(&key, json_bytes(&outputs)).await? {
            return Ok(outputs.to_vec());
        }
        let chosen: Vec<RenditionOutput> = self
            .get_json(&key)
            .await?
            .ok_or_else(|| StorageError::NotFound(key.clone()))?;
        match chosen
            .iter()
            .find(|o| !keys::valid_rendition_dir(o.stored_dir()))
        {
            Some(o) => Err(StorageError::Corrupt {
                key,
                message: format!("names directory {:?}", o.stored_dir()),
            }),
            None => Ok(chosen),
        }
    }

    /// After `ready`: delete the rendition directories `record` does not serve from, then the
    /// video's intermediates (`work/{id}`, attempt markers included). Returns how many objects
    /// went. Does nothing unless `record` is `ready`.
    pub async fn sweep_ready(&self, record: &VideoRecord) -> Result<usize, StorageError> {
        // A ready record always names its renditions; one that names none would make every
        // directory unchosen, so it sweeps nothing.
        if record.state != VideoState::Ready || record.renditions.is_empty() {
            return Ok(0);
        }
        let dirs: Vec<&str> = record
            .renditions
            .iter()
            .map(|r| r.dir.as_deref().unwrap_or(&r.name))
            .collect();
        self.sweep_after_commit(&record.video_id, &dirs).await
    }

    /// Once a video's outputs are chosen: delete its rendition directories other than
    /// `served`, then its intermediates (`work/{id}`, attempt markers included), in that order
    /// (a marker goes only after the directory it points to). Returns how many objects went.
    /// What the job does right after its commit and the sweep of ready videos does later.
    pub async fn sweep_after_commit(
        &self,
        video_id: &str,
        served: &[&str],
    ) -> Result<usize, StorageError> {
        let n = self.delete_unchosen_dirs(video_id, served).await?;
        let n = n + self.delete_prefix(&keys::work_prefix(video_id)).await?;
        Ok(n + self.remove_cut_writes(video_id, served).await?)
    }

    /// On the local store: delete the partial files ([`uploads::is_partial_file`]) that writes
    /// cut short by a crash left in `video_id`'s rendition directories other than `served` and
    /// under `work/{id}`, then the directories they alone kept. object_store writes each object
    /// to `{key}#{n}` and renames it when whole; listings do not show these files, so deleting
    /// by listing left them, and the bytes of a segment or chunk each, for good. Partial files
    /// in `served` directories and beside the video's own objects stay: a task run again (at
    /// least once) may be writing one there. Returns how many files went. On S3 a cut single
    /// `PUT` leaves nothing, and a cut multipart upload stays incomplete until the bucket's
    /// lifecycle rule removes it (docs/uploads.md).
    ///
    /// Errors: the blocking task failed; files that cannot be read or removed are skipped.
    async fn remove_cut_writes(
        &self,
        video_id: &str,
        served: &[&str],
    ) -> Result<usize, StorageError> {
        let Some(fs) = &self.local else {
            return Ok(0);
        };
        let video = fs.path_to_filesystem(&path(&keys::video_prefix(video_id)))?;
        let work = fs.path_to_filesystem(&path(&keys::work_prefix(video_id)))?;
        let served: Vec<PathBuf> = served.iter().map(|d| video.join(d)).collect();
        tokio::task::spawn_blocking(move || {
            let unchosen = |dir: &Path| {
                if dir == video || served.iter().any(|s| s == dir) {
                    Sweep::Keep
                } else {
                    Sweep::FilesAndDir
                }
            };
            remove_partial_files_below(&video, None, &unchosen)
                + remove_partial_files_below(&work, None, &|_| Sweep::FilesAndDir)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("sweep of cut writes: {e}")))
    }

    /// Delete every rendition directory of `video_id` other than `chosen` (attempts that
    /// finished, or half-finished, after another attempt's directory was chosen). Returns how
    /// many objects went.
    pub async fn delete_unchosen_dirs(
        &self,
        video_id: &str,
        chosen: &[&str],
    ) -> Result<usize, StorageError> {
        let mut deleted = 0;
        for (key, _) in self.list(&keys::video_prefix(video_id)).await? {
            if keys::rendition_dir_of(video_id, &key).is_some_and(|d| !chosen.contains(&d)) {
                self.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// What [`remove_partial_files_below`] does in one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// Nothing to its own files (the directories below it are still walked).
    Keep,
    /// Delete its partial files.
    Files,
    /// Delete its partial files, then the directory itself if that left it empty.
    FilesAndDir,
}

/// Walk `root` and every directory below it, and where `sweep` says so delete the partial
/// files ([`uploads::is_partial_file`]) last modified at or before `cutoff` (any, with `None`),
/// and the directories that left empty. The one walk of both sweeps of what cut writes left:
/// uploads' ([`Storage::sweep_cut_uploads`]) and a committed video's
/// ([`Storage::sweep_after_commit`]). Returns how many files went; what cannot be read or
/// removed is skipped (the next sweep tries again).
fn remove_partial_files_below(
    root: &Path,
    cutoff: Option<std::time::SystemTime>,
    sweep: &dyn Fn(&Path) -> Sweep,
) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let here = sweep(root);
    let mut gone = 0;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            gone += remove_partial_files_below(&entry.path(), cutoff, sweep);
            continue;
        }
        let old_enough = || match cutoff {
            None => true,
            Some(cutoff) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t <= cutoff),
        };
        if here != Sweep::Keep
            && uploads::is_partial_file(&entry.file_name().to_string_lossy())
            && old_enough()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            gone += 1;
        }
    }
    if here == Sweep::FilesAndDir {
        // Only an empty directory goes.
        let _ = std::fs::remove_dir(root);
    }
    gone
}

/// What [`Storage::swap_json`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Swapped<T, R> {
    /// The new value was written.
    Written(T),
    /// `decide` refused, saying why; nothing was written.
    Refused(R),
    /// No object at the key.
    Missing,
}

/// What became of an owner's record write ([`Storage::save_record_fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordWrite {
    /// Written.
    Written,
    /// Refused: the stored record was written under a newer lease epoch, so this writer no
    /// longer owns the video.
    Fenced {
        /// The stored record's epoch.
        stored_epoch: u64,
    },
    /// Refused: the stored record is `ready` or `failed`, which never change again.
    Terminal {
        /// The stored state.
        stored: VideoState,
    },
    /// Refused: no record exists (only ingest creates one).
    Missing,
    /// Refused: the change does not apply to a video in this state (reprocessing a video that
    /// has not failed).
    WrongState {
        /// The stored state.
        stored: VideoState,
    },
}

/// The rule of every record swap, as a plain function: a terminal record is never replaced
/// (writing the same terminal state again under the same epoch is an idempotent success), and
/// a record written under a newer epoch is never replaced by an older one.
pub fn record_write_decision(stored: &VideoRecord, new: &VideoRecord) -> RecordWrite {
    if stored.state.is_terminal() {
        if stored.state == new.state && stored.epoch == new.epoch {
            return RecordWrite::Written;
        }
        return RecordWrite::Terminal {
            stored: stored.state,
        };
    }
    if stored.epoch > new.epoch {
        return RecordWrite::Fenced {
            stored_epoch: stored.epoch,
        };
    }
    RecordWrite::Written
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Read all of `file` (`size` bytes by the store's metadata) and list it with the file; a
/// read of another length (the file is not what the listing said) is returned unlisted.
fn read_listed(file: std::fs::File, size: u64) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(size as usize);
    (&file).read_to_end(&mut buf)?;
    Ok(if buf.len() as u64 == size {
        file_bytes::from_file(buf, file)
    } else {
        Bytes::from(buf)
    })
}

/// The LocalFileSystem swap (blocking): lock, read, decide, write a temporary file, rename it
/// over the object (readers see the old or the new value, never a torn one), unlock.
fn local_swap<T, R, F>(key: &str, file: &Path, decide: F) -> Result<Swapped<T, R>, StorageError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    F: Fn(&T) -> Result<T, R>,
{
    let io = |what: &str, e: std::io::Error| StorageError::Backend(format!("{what} {key}: {e}"));
    if !file.exists() {
        return Ok(Swapped::Missing);
    }
    let lock_path = file.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("opening the lock of", e))?;
    lock.lock().map_err(|e| io("locking", e))?;
    let stored = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Swapped::Missing),
        Err(e) => return Err(io("reading", e)),
    };
    let stored: T = decode_json(key, &stored)?;
    let new = match decide(&stored) {
        Ok(v) => v,
        Err(refused) => return Ok(Swapped::Refused(refused)),
    };
    let tmp = file.with_extension(format!("json.{:016x}.tmp", rand::random::<u64>()));
    std::fs::write(&tmp, json_bytes(&new)).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("renaming over", e)
    })?;
    // The lock is released when `lock` is dropped.
    Ok(Swapped::Written(new))
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // Serialising plain data structs cannot fail.
    Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_system_is_told_from_a_failing_store() {
        use std::io::Error as IoError;
        // How object_store's local backend reports a failed write: its own error, with the
        // file system's behind it.
        #[derive(Debug)]
        struct CopyFailed(IoError);
        impl std::fmt::Display for CopyFailed {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "Unable to copy data to file: {}", self.0)
            }
        }
        impl std::error::Error for CopyFailed {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let generic = |errno| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(CopyFailed(IoError::from_raw_os_error(errno))),
        };
        for errno in [nix::libc::ENOSPC, nix::libc::EDQUOT] {
            match StorageError::from(generic(errno)) {
                StorageError::Full(m) => assert!(m.contains("Unable to copy"), "{m}"),
                other => panic!("errno {errno}: {other:?}"),
            }
        }
        for errno in [nix::libc::EACCES, nix::libc::EIO] {
            assert!(
                matches!(StorageError::from(generic(errno)), StorageError::Backend(_)),
                "errno {errno}"
            );
        }
    }

    #[tokio::test]
    async fn in_memory_store_conforms() {
        conformance::run(&Storage::open(&StorageLocation::Memory).unwrap()).await;
    }

    #[tokio::test]
    async fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&Storage::open(&StorageLocation::Local(dir.path().into())).unwrap()).await;
    }

    /// Issue 9: after `ready`, the sweep deletes the directories of attempts the record does
    /// not serve from (one finished after the commit) and the attempt markers, and keeps every
    /// file the record names. A record that names no rendition sweeps no directory.
    #[tokio::test]
    async fn the_sweep_of_a_ready_video_keeps_what_it_serves_and_nothing_else() {
        use crate::model::{RenditionSummary, VideoState};
        let s = Storage::open(&StorageLocation::Memory).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let served = keys::attempt_dir("240p", &keys::attempt_token(2, 1, 1));
        let late = keys::attempt_dir("240p", &keys::attempt_token(1, 9, 3));
        for dir in [&served, &late] {
            for f in ["00000.m4s", "init.mp4", "index.m3u8"] {
                s.put(&keys::rendition_file(id, dir, f), Bytes::from_static(b"x"))
                    .await
                    .unwrap();
            }
        }
        s.put(
            &keys::attempt_marker(id, "e1-0000000000000009-a3"),
            Bytes::new(),
        )
        .await
        .unwrap();
        s.put(&keys::multivariant(id), Bytes::from_static(b"#EXTM3U"))
            .await
            .unwrap();
        let mut record = VideoRecord::uploaded(id.into(), "00".into(), 1, "default".into(), None);
        record.state = VideoState::Ready;
        let none = s.sweep_ready(&record).await.unwrap();
        assert_eq!(none, 0, "no rendition named: nothing swept");
        record.renditions = vec![RenditionSummary {
            dir: Some(served.clone()),
            ..RenditionSummary::planned(&crate::media::ladder::Rendition {
                name: "240p".into(),
                width: 426,
                height: 240,
                video_kbps: 400,
                audio_kbps: 64,
            })
        }];
        assert_eq!(
            s.sweep_ready(&record).await.unwrap(),
            4,
            "3 files and the marker"
        );
        let mut left: Vec<String> = s
            .list(&keys::video_prefix(id))
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        left.sort();
        let mut want: Vec<String> = ["00000.m4s", "index.m3u8", "init.mp4"]
            .iter()
            .map(|f| keys::rendition_file(id, &served, f))
            .chain([keys::multivariant(id)])
            .collect();
        want.sort();
        assert_eq!(left, want);
        assert!(s.list(&keys::work_prefix(id)).await.unwrap().is_empty());
    }

    /// The sweep after a commit, on the local store, also takes the partial files
    /// (`{key}#{n}`) that crashes left where listings do not look: in an unchosen attempt's
    /// directory (with the directory), and under `work/{id}`. Those in the served directory
    /// and beside the video's own objects stay, as does every whole file served.
    #[tokio::test]
    async fn the_sweep_after_a_commit_takes_what_cut_writes_left_on_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&StorageLocation::Local(dir.path().into())).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let served = keys::attempt_dir("240p", &keys::attempt_token(2, 1, 1));
        let cut = keys::attempt_dir("240p", &keys::attempt_token(1, 9, 3));
        let whole = keys::rendition_file(id, &served, "00000.m4s");
        s.put(&whole, Bytes::from_static(b"x")).await.unwrap();
        let partial = |key: String| {
            let p = dir.path().join(format!("{key}#3"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"bytes a crash cut short").unwrap();
            p
        };
        let in_cut = partial(keys::rendition_file(id, &cut, "00001.m4s"));
        let in_work = partial(format!("{}/chunks/00002.mkv", keys::work_prefix(id)));
        let in_served = partial(keys::rendition_file(id, &served, "00001.m4s"));
        let beside_record = partial(format!("{}/record.json", keys::video_prefix(id)));

        assert_eq!(s.sweep_after_commit(id, &[&served]).await.unwrap(), 2);
        for p in [&in_cut, &in_work] {
            assert!(!p.exists(), "{p:?} should be gone");
        }
        let video = dir.path().join(keys::video_prefix(id));
        assert!(
            !video.join(&cut).exists(),
            "the cut attempt's directory too"
        );
        assert!(!dir.path().join(keys::work_prefix(id)).exists());
        for p in [&in_served, &beside_record] {
            assert!(p.exists(), "{p:?} should stay");
        }
        let kept = s.get(&whole).await.unwrap().map(|o| o.bytes);
        assert_eq!(kept, Some(Bytes::from_static(b"x")));
    }
}
