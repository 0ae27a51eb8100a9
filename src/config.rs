//! Configuration: the typed [`Config`] a node runs with, and the `cluster.toml` file it can be
//! read from.
//!
//! The file format is parsed with `serde` + `toml` into [`ClusterFile`] (unknown keys are
//! refused, so a typo is an error rather than a silently ignored setting) and then validated into
//! a [`Config`] for one node. Every number carries its unit in its name (`_seconds`, `_kbps`,
//! `_bytes`, `_ms`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused. Each message names the setting and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The path that was parsed.
        path: PathBuf,
        /// The parser's message, which names the line and key.
        message: String,
    },
    /// The values parse but cannot work together.
    #[error("config is not usable: {0}")]
    Invalid(String),
}

/// One rung of the configured ladder: what to encode when the source is at least this tall.
///
/// `height` is the short side of the picture in pixels (so a portrait 1080x1920 phone video
/// counts as 1080p). Bitrates are kbit/s. Default rungs follow the seeds' ABR table
/// (`../shared/seeds/004`): 1080p 8000, 720p 5000, 480p 2500, 360p 1000; 240p (400) is reel's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    /// Rendition name, used in URIs and object keys (`[a-z0-9_-]`, 1 to 32 characters).
    pub name: String,
    /// Short side of the output picture, pixels.
    pub height: u32,
    /// Target video bitrate, kbit/s.
    pub video_kbps: u32,
    /// AAC audio bitrate, kbit/s (ignored for sources without audio).
    pub audio_kbps: u32,
}

/// The default ladder: 1080p, 720p, 480p, 360p, 240p.
pub fn default_ladder() -> Vec<RungConfig> {
    [
        ("1080p", 1080, 8000, 128),
        ("720p", 720, 5000, 128),
        ("480p", 480, 2500, 128),
        ("360p", 360, 1000, 96),
        ("240p", 240, 400, 64),
    ]
    .into_iter()
    .map(|(name, height, video_kbps, audio_kbps)| RungConfig {
        name: name.to_string(),
        height,
        video_kbps,
        audio_kbps,
    })
    .collect()
}

/// How videos are processed. Shared by every node of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// Processing profile name; part of the content address, so changing the ladder under a new
    /// profile name gives new video ids instead of mixing outputs.
    pub profile: String,
    /// Fixed segment duration, seconds (every rendition cuts at the same instants).
    pub segment_seconds: u32,
    /// Sources longer than this are encoded in chunks of this many seconds (rounded down to
    /// whole segments), spread over workers of every node, with the audio encoded once and each
    /// rendition packaged by stream copy; 0 turns chunking off.
    pub chunk_seconds: u32,
    /// x264 preset (`ultrafast` .. `veryslow`).
    pub preset: String,
    /// Attempts per task before the video is marked failed (transient errors only; invalid input
    /// fails at once).
    pub max_attempts: u32,
    /// First retry delay, milliseconds; doubles per attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    /// Largest retry delay, milliseconds.
    pub backoff_max_ms: u64,
    /// A running task that reports no progress for this long is reclaimed and re-dispatched,
    /// seconds.
    pub stuck_after_seconds: u64,
    /// Times a crashed `JobActor` is restarted before the video is marked failed.
    pub max_job_restarts: u32,
    /// The ladder, highest first.
    pub ladder: Vec<RungConfig>,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            profile: "default".into(),
            segment_seconds: 4,
            chunk_seconds: 16,
            preset: "veryfast".into(),
            max_attempts: 3,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 30_000,
            stuck_after_seconds: 60,
            max_job_restarts: 5,
            ladder: default_ladder(),
        }
    }
}

impl ProcessingConfig {
    /// The retry delay before attempt `attempt + 1`, given that `attempt` (1-based) failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ms = self.backoff_initial_ms.saturating_mul(1u64 << exp);
        Duration::from_millis(ms.min(self.backoff_max_ms))
    }

    /// How long a task may go without a progress report.
    pub fn stuck_after(&self) -> Duration {
        Duration::from_secs(self.stuck_after_seconds)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.ladder.is_empty() {
            return Err(ConfigError::Invalid(
                "the ladder is empty: add at least one [[ladder]] rung".into(),
            ));
        }
        for rung in &self.ladder {
            if !crate::storage::keys::valid_rendition_name(&rung.name) {
                return Err(ConfigError::Invalid(format!(
                    "ladder rung name {:?} must be 1 to 32 characters of a-z, 0-9, '_' or '-'",
                    rung.name
                )));
            }
            if rung.height < 16 || rung.video_kbps == 0 {
                return Err(ConfigError::Invalid(format!(
                    "ladder rung {} needs height >= 16 and video_kbps > 0",
                    rung.name
                )));
            }
        }
        let mut names: Vec<_> = self.ladder.iter().map(|r| &r.name).collect();
        names.sort();
        names.dedup();
        if names.len() != self.ladder.len() {
            return Err(ConfigError::Invalid(
                "ladder rung names must be unique".into(),
            ));
        }
        if self.segment_seconds == 0 || self.segment_seconds > 60 {
            return Err(ConfigError::Invalid(
                "segment_seconds must be between 1 and 60".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Limits that protect a node from bad input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted upload, bytes (default 20 GiB). Larger bodies get `413`.
    pub max_upload_bytes: u64,
    /// An unfinished resumable (tus) upload expires this long after its last received bytes,
    /// seconds (default 86400, one day); its parts are then deleted. A finished one keeps its
    /// state this long too, so a client that lost the last reply can still ask (`HEAD`).
    pub upload_expiry_seconds: u64,
    /// An upload body (`PUT`/`POST /upload`, tus `PATCH`) that delivers no byte for this long
    /// is cut, seconds (default 30). A tus `PATCH` keeps what arrived and gives the upload
    /// back, so the client's resume gets in instead of `423 Locked` for ever (a phone that
    /// changed networks mid-`PATCH` leaves a connection nobody closes). On a cluster, also the
    /// bound a request forwarded to a peer may make no progress before that peer's `/health`
    /// is asked, and that question's own bound (`504` when it goes unanswered; `http::proxy`).
    pub body_idle_seconds: u64,
    /// A connection must deliver a request's whole header within this, seconds (default 15);
    /// the same timer closes a keep-alive connection idle this long between requests. Slow
    /// header senders (slowloris) are closed (hyper's `header_read_timeout`).
    pub header_read_seconds: u64,
    /// Largest request header, bytes (default 16384): larger get `431` (hyper's
    /// `max_header_size`; nginx's `large_client_header_buffers` is 8 KiB per line).
    pub max_header_bytes: usize,
    /// Open HTTP connections a node holds at once (default 30000, and never more than the
    /// process's open-file limit less 512 for the store, SQLite and ffmpeg). A connection
    /// beyond it gets `503` with `Retry-After` and is closed.
    pub max_connections: usize,
    /// Open HTTP connections from one IP address (default 512: an office behind one NAT
    /// address still plays). Beyond it, `503` and closed, so one client cannot take the node's
    /// connections from everybody else.
    pub max_connections_per_address: usize,
    /// How long a request waits for the object store to answer a small operation (a read, a
    /// one-object write, a listing) before it fails as unreachable, seconds (default 10): a hung
    /// store becomes a `503` with `Retry-After` in bounded time.
    pub store_answer_seconds: u64,
    /// Memory the node's upload bodies may hold together on their way to the object store,
    /// MiB (default 256; at least 16 with S3; `storage::part_writer`): the bytes of the part
    /// each is filling (parts of 1 MiB on the local store, 8 MiB on S3) and of up to 4 parts
    /// being written. A body that finds it spent sends its part short on the local store, or
    /// moves it to the spool on S3 (`upload_spool_mib`); otherwise it waits up to
    /// `body_idle_seconds`, its sender held back by TCP, then gets `503` with `Retry-After`
    /// and nothing of it is stored. Without it 100 `PUT`s that had sent 7 MiB each held
    /// 735 MiB.
    pub upload_buffer_mib: u64,
    /// Disk the node's upload bodies may use together for parts that fill slowly, MiB
    /// (default 4096; 0 keeps them in memory), where the object store wants whole parts (S3:
    /// 8 MiB parts; `storage::part_writer`). A part still filling a second after its first
    /// byte moves to an unnamed file in `data_dir`, and its memory comes back, so slow or
    /// trickling clients cannot hold `upload_buffer_mib`. The local store sends such parts
    /// short instead and uses none of it.
    pub upload_spool_mib: u64,
    /// How long a stopping node (Ctrl-C, SIGTERM) lets the requests it is answering or
    /// receiving finish before it cuts them, seconds (default 10, at most 3600; 0 cuts them at
    /// once): a segment going to a slow player, an upload's body. An upload cut this way
    /// stores nothing (`PUT`) or keeps what arrived for the client to resume (tus). Keep it
    /// below what the process supervisor waits before it kills (Kubernetes'
    /// `terminationGracePeriodSeconds`, 30 s by default; systemd's `TimeoutStopSec`, 90 s),
    /// less a few seconds for the node's actors to stop (leases released, the playback log
    /// written); `reel cluster-up` waits this long and [`Limits::STOP_MARGIN`] more.
    pub shutdown_drain_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 * 1024 * 1024 * 1024,
            upload_expiry_seconds: 86_400,
            body_idle_seconds: 30,
            header_read_seconds: 15,
            max_header_bytes: 16 * 1024,
            max_connections: 30_000,
            max_connections_per_address: 512,
            store_answer_seconds: 10,
            upload_buffer_mib: 256,
            upload_spool_mib: 4096,
            shutdown_drain_seconds: 10,
        }
    }
}

impl Limits {
    /// [`Limits::body_idle_seconds`] as a duration.
    pub fn body_idle(&self) -> Duration {
        Duration::from_secs(self.body_idle_seconds)
    }

    /// [`Limits::upload_buffer_mib`] in bytes.
    pub fn upload_buffer_bytes(&self) -> u64 {
        self.upload_buffer_mib * 1024 * 1024
    }

    /// [`Limits::upload_spool_mib`] in bytes.
    pub fn upload_spool_bytes(&self) -> u64 {
        self.upload_spool_mib * 1024 * 1024
    }

    /// [`Limits::store_answer_seconds`] as a duration.
    pub fn store_answer(&self) -> Duration {
        Duration::from_secs(self.store_answer_seconds)
    }

    /// [`Limits::shutdown_drain_seconds`] as a duration.
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_seconds)
    }

    /// What a stopping node needs after its drain (its actors stopping: leases released, the
    /// playback log written; about a second on this machine), with room to spare: `reel
    /// cluster-up` kills a node still running this long after its drain.
    pub const STOP_MARGIN: Duration = Duration::from_secs(10);
}

/// A secret (an S3 secret key, the cluster cookie): compared and cloned, never printed
/// (`Debug` shows `***`), so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the places that must hand it on (the S3 client, the NodeServer
    /// handshake).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The `[s3]` table of `cluster.toml`. Every field may instead come from the standard
/// environment variables, which are used when the field is absent: `AWS_ENDPOINT_URL`,
/// `AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL of an S3-compatible server (`http://127.0.0.1:8333` for SeaweedFS or MinIO).
    /// When set, requests are path-style (`{endpoint}/{bucket}/{key}`). Absent: AWS itself.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`; S3-compatible servers mostly ignore it).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key. Prefer the environment variable to writing it in a file.
    pub secret_access_key: Option<String>,
}

/// An S3 bucket and how to reach it, resolved from `s3://bucket`, the `[s3]` table and the
/// environment.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL (path-style requests), or `None` for AWS (virtual-hosted style).
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Access key id; `None`: unsigned requests (a test server without credentials).
    pub access_key_id: Option<String>,
    /// Secret access key (never printed).
    pub secret_access_key: Option<Secret>,
    /// Session token for temporary credentials.
    pub session_token: Option<Secret>,
}

impl S3Location {
    /// Resolve `bucket` with `settings` first, then `env` (the process environment as a map, so
    /// tests never touch process-wide variables).
    ///
    /// Errors: an empty or malformed bucket name, an endpoint that is not an http(s) URL, a key
    /// id without a secret or the reverse.
    pub fn resolve(
        bucket: &str,
        settings: &S3Settings,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let bucket = bucket.trim_end_matches('/');
        // S3 bucket naming rules: 3 to 63 of a-z 0-9 . -
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(ConfigError::Invalid(format!(
                "s3 bucket {bucket:?} must be 3 to 63 characters of a-z, 0-9, '-' or '.' (write storage = \"s3://bucket\")"
            )));
        }
        let pick = |field: &Option<String>, vars: &[&str]| {
            field
                .clone()
                .or_else(|| vars.iter().find_map(|v| env.get(*v).cloned()))
                .filter(|v| !v.is_empty())
        };
        let endpoint = pick(
            &settings.endpoint,
            &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
        );
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "s3 endpoint {e:?} must be an http:// or https:// URL"
                )));
            }
        }
        let access_key_id = pick(&settings.access_key_id, &["AWS_ACCESS_KEY_ID"]);
        let secret = pick(&settings.secret_access_key, &["AWS_SECRET_ACCESS_KEY"]);
        if access_key_id.is_some() != secret.is_some() {
            return Err(ConfigError::Invalid(
                "s3 needs both an access key id and a secret access key (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [s3] access_key_id and secret_access_key)".into(),
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            endpoint,
            region: pick(&settings.region, &["AWS_REGION", "AWS_DEFAULT_REGION"])
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id,
            secret_access_key: secret.map(Secret::new),
            session_token: env
                .get("AWS_SESSION_TOKEN")
                .filter(|v| !v.is_empty())
                .map(|v| Secret::new(v.clone())),
        })
    }
}

/// Segment serving: the node-local cache and read-ahead (issue 4, seed rules 7 and 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Byte budget of the node-local segment cache, MiB (2^20 bytes). Least recently used
    /// objects are evicted beyond it; an object larger than the whole budget is served uncached.
    pub cache_mib: u64,
    /// Read-ahead depth, segments: after serving segment k, prefetch k+1 ..= k+depth of the
    /// same rendition (seed rule 8 requires 1; 2 is allowed). 0 turns read-ahead off.
    pub prefetch_depth: usize,
    /// Prefetches running at once on this node; one more is skipped (and logged) rather than
    /// queued, so read-ahead never piles up under load.
    pub max_prefetches: usize,
    /// A playback session without a request for this long is stopped, seconds.
    pub session_idle_seconds: u64,
    /// Playback sessions one node runs at once; a request that would open one more gets `503`
    /// with `Retry-After` (idle sessions stop after `session_idle_seconds`). Bounds the memory
    /// a client can make the node spend by asking for the multivariant playlist again and
    /// again (issue 11: sessions are bounded).
    pub max_sessions: usize,
    /// Rows of the playback log's SQLite table (`playback_rows`) a node keeps; past it the
    /// oldest are deleted, with the ids of sessions left with no row. About 30 bytes a row,
    /// plus about 100 bytes a session: the default, 4,000,000, is about 120 MB. The log is not
    /// replicated (seed: local event logs), so this bounds its disk use.
    pub log_max_rows: u64,
    /// The playback log's JSON-lines file (`playback.jsonl`) is rotated at this size, MiB:
    /// renamed `playback.jsonl.1` (the older ones shift to `.2`, ...).
    pub log_file_mib: u64,
    /// Rotated JSON-lines files kept; the oldest beyond them is deleted. The files take at most
    /// `log_file_mib` times this plus one.
    pub log_files: u32,
}

/// The playback log's bounds by default: the storage layer's own.
const LOG_DEFAULTS: crate::storage::playback::Retention =
    crate::storage::playback::Retention::DEFAULT;

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            cache_mib: 512,
            prefetch_depth: 1,
            max_prefetches: 32,
            session_idle_seconds: 300,
            max_sessions: 50_000,
            log_max_rows: LOG_DEFAULTS.max_rows,
            log_file_mib: LOG_DEFAULTS.file_bytes >> 20,
            log_files: LOG_DEFAULTS.files,
        }
    }
}

impl StreamingConfig {
    /// The cache budget in bytes.
    pub fn cache_bytes(&self) -> usize {
        (self.cache_mib.saturating_mul(1024 * 1024)).min(usize::MAX as u64) as usize
    }

    /// The playback log's bounds these settings give.
    pub fn log_retention(&self) -> crate::storage::playback::Retention {
        crate::storage::playback::Retention {
            max_rows: self.log_max_rows,
            file_bytes: self.log_file_mib.saturating_mul(1 << 20),
            files: self.log_files,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.prefetch_depth > 2 {
            return Err(ConfigError::Invalid(
                "streaming.prefetch_depth must be 0, 1 or 2".into(),
            ));
        }
        if self.session_idle_seconds == 0 {
            return Err(ConfigError::Invalid(
                "streaming.session_idle_seconds must be at least 1".into(),
            ));
        }
        if self.log_max_rows == 0 || self.log_file_mib == 0 {
            return Err(ConfigError::Invalid(
                "streaming.log_max_rows and streaming.log_file_mib must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Where the object store lives.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageLocation {
    /// A directory on this machine (object_store's `LocalFileSystem`). For a cluster on one
    /// machine every node names the same directory.
    Local(PathBuf),
    /// An in-memory store (tests only; lost when the process ends).
    Memory,
    /// An S3 bucket (AWS, MinIO, SeaweedFS, ...): `s3://bucket`.
    S3(S3Location),
}

impl StorageLocation {
    /// Parse `local:DIR`, a bare path, `memory:` or `s3://bucket` (S3 settings from the process
    /// environment only). A relative path is taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::parse_with(text, base, &S3Settings::default(), &env)
    }

    /// [`StorageLocation::parse`] with explicit `[s3]` settings and environment map.
    pub fn parse_with(
        text: &str,
        base: &Path,
        s3: &S3Settings,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        if text == "memory:" {
            return Ok(Self::Memory);
        }
        if let Some(bucket) = text.strip_prefix("s3://") {
            return Ok(Self::S3(S3Location::resolve(bucket, s3, env)?));
        }
        let path = text.strip_prefix("local:").unwrap_or(text);
        if path.is_empty() {
            return Err(ConfigError::Invalid("storage path is empty".into()));
        }
        Ok(Self::Local(absolute_path(Path::new(path), base)?))
    }
}

/// `path` made absolute: unchanged when it already is, else joined to `base` (made absolute
/// against the process's working directory when it is relative itself). `.` components are
/// dropped; symbolic links and `..` are left as written.
///
/// Every path from the command line or a config file goes through this once, at load, so
/// nothing after that sees a relative path: ffmpeg resolves relative names in a concat list
/// against the list's own folder, not the working directory (issue 8).
///
/// Errors: [`ConfigError::Invalid`] for an empty path or when the working directory cannot be
/// read.
pub fn absolute_path(path: &Path, base: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::Invalid("a path is empty".into()));
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    std::path::absolute(&joined).map_err(|e| {
        ConfigError::Invalid(format!(
            "cannot make {} absolute (is the working directory readable?): {e}",
            joined.display()
        ))
    })
}

/// The cluster side of a node: who the members are and how to reach them.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's NodeServer address (ractor_cluster).
    pub listen: SocketAddr,
    /// The shared secret every node must present (`cookie` in the file, or the environment
    /// variable `REEL_CLUSTER_COOKIE`, which wins). Never logged.
    pub cookie: Secret,
    /// Every member, this node included: (id, http address, cluster address).
    pub members: Vec<(String, SocketAddr, SocketAddr)>,
    /// Heartbeat period between Gateways.
    pub heartbeat: Duration,
    /// Missed heartbeats before a peer is fenced.
    pub fence_after: u32,
}

/// Everything one node needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id: names it in logs, events and (later) the ring.
    pub node_id: String,
    /// HTTP listen address. Default `127.0.0.1:8080`: loopback unless told otherwise.
    pub listen: SocketAddr,
    /// Node-local directory for SQLite, scratch space for ffmpeg and logs.
    pub data_dir: PathBuf,
    /// The shared, durable object store.
    pub storage: StorageLocation,
    /// Transcode workers on this node (ffmpeg processes at once).
    pub workers: usize,
    /// How videos are processed.
    pub processing: ProcessingConfig,
    /// Input limits.
    pub limits: Limits,
    /// Cluster membership; `None` for a stand-alone node.
    pub cluster: Option<ClusterConfig>,
    /// The URL clients reach the service at (`https://videos.example.com`, a load balancer),
    /// without a trailing slash: tus `Location` answers are built from it. `None`: built from
    /// the request's `Host` only when that is this node's own listen address, else relative
    /// (`/files/{id}`, which tus clients resolve against the URL they posted to). A client's
    /// `Host` is never echoed otherwise (issue 10).
    pub public_url: Option<String>,
    /// The secret that signs requests one node forwards to another (`Reel-Forwarded-By`,
    /// see `http::proxy`): the cluster cookie on a cluster; `None` for a stand-alone node,
    /// which then accepts no forwarded request.
    pub forward_secret: Option<Secret>,
    /// How often the node re-checks which unfinished videos it owns.
    pub reconcile_every: Duration,
    /// A video lease's time to live: its holder renews it every third of this and stops
    /// writing once it could not for this long; another node claims it only after this (plus
    /// a clock skew allowance) without a renewal, or once released (`storage::lease`).
    pub lease_ttl: Duration,
    /// Segment cache and read-ahead.
    pub streaming: StreamingConfig,
}

impl Config {
    /// The embedded default for one node: objects under `DATA_DIR/objects`, SQLite under
    /// `DATA_DIR`, the default ladder, two workers. A relative `data_dir` is taken against the
    /// working directory now (see [`absolute_path`]).
    pub fn single_node(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        let data_dir = data_dir.into();
        let data_dir = absolute_path(&data_dir, Path::new(".")).unwrap_or(data_dir);
        Self {
            node_id: "node-1".into(),
            listen,
            storage: StorageLocation::Local(data_dir.join("objects")),
            data_dir,
            workers: 2,
            processing: ProcessingConfig::default(),
            limits: Limits::default(),
            cluster: None,
            reconcile_every: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(ClusterTiming::default().lease_seconds),
            streaming: StreamingConfig::default(),
            public_url: None,
            forward_secret: None,
        }
    }

    /// Read `cluster.toml` and pick the node `node_id` (or the only node when `None`).
    ///
    /// Errors: unreadable file, unknown keys, an unknown node id, duplicate addresses, an invalid
    /// ladder.
    pub fn from_file(path: &Path, node_id: Option<&str>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::from_file_with_env(path, node_id, &env)
    }

    /// [`Config::from_file`] with the environment given as a map (S3 credentials).
    pub fn from_file_with_env(
        path: &Path,
        node_id: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let path = &absolute_path(path, Path::new("."))?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ClusterFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Keys of the file are relative to the file's own folder (absolute: `path` is).
        let base = path.parent().unwrap_or(Path::new("/"));
        file.into_config(node_id, base, env)
    }

    /// Check what cannot work; called by `from_file` and by `run`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Paths are made absolute at load (`absolute_path`); a relative one here is a bug of
        // whoever built this Config, and would break ffmpeg's concat lists (issue 8).
        let relative = |p: &Path| !p.is_absolute();
        if relative(&self.data_dir) {
            return Err(ConfigError::Invalid(format!(
                "data_dir {} must be absolute (build it with config::absolute_path)",
                self.data_dir.display()
            )));
        }
        if let StorageLocation::Local(dir) = &self.storage {
            if relative(dir) {
                return Err(ConfigError::Invalid(format!(
                    "storage directory {} must be absolute (build it with config::absolute_path)",
                    dir.display()
                )));
            }
        }
        self.processing.validate()?;
        self.streaming.validate()?;
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::Invalid(
                "workers must be between 1 and 64".into(),
            ));
        }
        if self.limits.upload_expiry_seconds == 0
            || self.limits.upload_expiry_seconds > 366 * 86_400
        {
            return Err(ConfigError::Invalid(
                "limits.upload_expiry_seconds must be between 1 and 31622400 (366 days)".into(),
            ));
        }
        if self.limits.body_idle_seconds == 0 || self.limits.body_idle_seconds > 3600 {
            return Err(ConfigError::Invalid(
                "limits.body_idle_seconds must be between 1 and 3600".into(),
            ));
        }
        if self.limits.upload_buffer_mib == 0 || self.limits.upload_buffer_mib > 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.upload_buffer_mib must be between 1 and 1048576 (1 TiB)".into(),
            ));
        }
        if self.limits.upload_spool_mib > 4 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.upload_spool_mib must be at most 4194304 (4 TiB); 0 turns the spool off"
                    .into(),
            ));
        }
        // On S3 a body's parts are 8 MiB and must be whole (S3 takes no part under 5 MiB but
        // the last), so a body needs room for one part and the budget at least two.
        if matches!(self.storage, StorageLocation::S3(_)) && self.limits.upload_buffer_mib < 16 {
            return Err(ConfigError::Invalid(
                "limits.upload_buffer_mib must be at least 16 with S3 storage (two 8 MiB parts)"
                    .into(),
            ));
        }
        if self.limits.store_answer_seconds == 0 || self.limits.store_answer_seconds > 600 {
            return Err(ConfigError::Invalid(
                "limits.store_answer_seconds must be between 1 and 600".into(),
            ));
        }
        if self.limits.shutdown_drain_seconds > 3600 {
            return Err(ConfigError::Invalid(
                "limits.shutdown_drain_seconds must be at most 3600".into(),
            ));
        }
        if self.limits.header_read_seconds == 0 || self.limits.header_read_seconds > 3600 {
            return Err(ConfigError::Invalid(
                "limits.header_read_seconds must be between 1 and 3600".into(),
            ));
        }
        if self.limits.max_header_bytes < 1024 || self.limits.max_header_bytes > 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_header_bytes must be between 1024 and 1048576".into(),
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_address == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_connections and limits.max_connections_per_address must be at least 1"
                    .into(),
            ));
        }
        if !crate::storage::keys::valid_node_id(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "node id {:?} must be 1 to 32 characters of a-z, 0-9, '_' or '-'",
                self.node_id
            )));
        }
        Ok(())
    }
}

/// A public URL as configured: `http://` or `https://`, a host, no query or fragment; the
/// trailing slash dropped.
///
/// Errors: [`ConfigError::Invalid`] naming the value.
pub fn public_url(text: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "public_url {text:?} must be an http:// or https:// URL such as https://videos.example.com"
        ))
    };
    let u = url::Url::parse(text).map_err(|_| bad())?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// What `reel serve` was given on its command line (`None`: not given), resolved into a
/// [`Config`] by [`ServeFlags::resolve`].
///
/// Rules: without `--config`, the embedded default on `--data-dir` (default `./reel-data`) and
/// `--listen` (default `127.0.0.1:8080`). With `--config`, the file decides and every flag that
/// is given explicitly wins over it: `--listen` over the node's `http`, `--data-dir` over its
/// `data_dir`, `--storage` over `storage`. Relative flags are taken against the working
/// directory, relative file keys against the file's folder.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--node ID` (needs `--config`).
    pub node: Option<String>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--storage LOCATION` (`DIR`, `local:DIR`, `memory:`, `s3://bucket`).
    pub storage: Option<String>,
    /// `--public-url URL`.
    pub public_url: Option<String>,
}

/// The data directory `reel serve` uses when neither `--data-dir` nor a config file names one.
pub const DEFAULT_DATA_DIR: &str = "./reel-data";

/// The HTTP address `reel serve` listens on by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl ServeFlags {
    /// The node's configuration. `cwd` is the working directory relative flags are taken
    /// against; `env` the process environment (S3 settings, `REEL_CLUSTER_COOKIE`).
    ///
    /// Errors: `--node` without `--config`, and every [`Config::from_file`] and
    /// [`Config::validate`] error.
    pub fn resolve(
        &self,
        cwd: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(file) => {
                Config::from_file_with_env(&absolute_path(file, cwd)?, self.node.as_deref(), env)?
            }
            None => {
                if let Some(node) = &self.node {
                    return Err(ConfigError::Invalid(format!(
                        "--node {node} names a node of a config file: add --config cluster.toml"
                    )));
                }
                let data_dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                let listen = self
                    .listen
                    .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address"));
                Config::single_node(absolute_path(&data_dir, cwd)?, listen)
            }
        };
        if self.config.is_some() {
            if let Some(listen) = self.listen {
                config.listen = listen;
            }
            if let Some(dir) = &self.data_dir {
                config.data_dir = absolute_path(dir, cwd)?;
            }
        }
        if let Some(text) = &self.storage {
            config.storage = StorageLocation::parse_with(text, cwd, &S3Settings::default(), env)?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// One `[[node]]` table of `cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id (`[a-z0-9_-]`, 1 to 32 characters).
    pub id: String,
    /// HTTP address, `host:port`.
    pub http: SocketAddr,
    /// Cluster (ractor_cluster NodeServer) address, `host:port`.
    pub cluster: SocketAddr,
    /// Node-local data directory; default `./reel-data/{id}` beside the file.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Transcode workers; default 2.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_workers() -> usize {
    2
}

/// The `[cluster]` table: membership timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTiming {
    /// Heartbeat period, milliseconds.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before a peer is fenced.
    pub fence_after: u32,
    /// How often each node re-checks which unfinished videos it owns, seconds.
    pub reconcile_seconds: u64,
    /// A video lease's time to live, seconds: how long a dead or cut-off owner keeps its
    /// videos before another node may take them over (issue 9).
    pub lease_seconds: u64,
}

impl Default for ClusterTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1000,
            fence_after: 3,
            reconcile_seconds: 10,
            lease_seconds: 6,
        }
    }
}

/// The `cluster.toml` file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Shared storage: `local:DIR` (or a bare path) shared by every node, or `memory:`.
    pub storage: String,
    /// The cluster secret. Prefer the environment variable `REEL_CLUSTER_COOKIE`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Membership timing.
    #[serde(default)]
    pub cluster: ClusterTiming,
    /// Processing settings and the ladder.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// Input limits.
    #[serde(default)]
    pub limits: Limits,
    /// S3 connection settings, for `storage = "s3://bucket"`.
    #[serde(default)]
    pub s3: Option<S3Settings>,
    /// Segment cache and read-ahead.
    #[serde(default)]
    pub streaming: StreamingConfig,
    /// The URL clients reach the cluster at (a load balancer); see [`Config::public_url`].
    #[serde(default)]
    pub public_url: Option<String>,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

impl NodeEntry {
    /// The node's data directory, absolute: its `data_dir` taken against `base` (the cluster
    /// file's directory), or `reel-data/{id}` there.
    fn data_dir_in(&self, base: &Path) -> Result<PathBuf, ConfigError> {
        match &self.data_dir {
            Some(d) => absolute_path(d, base),
            None => absolute_path(&Path::new("reel-data").join(&self.id), base),
        }
    }
}

impl ClusterFile {
    fn into_config(
        self,
        node_id: Option<&str>,
        base: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::Invalid("the file lists no [[node]]".into()));
        }
        for (i, a) in self.nodes.iter().enumerate() {
            for b in &self.nodes[i + 1..] {
                if a.id == b.id {
                    return Err(ConfigError::Invalid(format!(
                        "node id {} appears twice",
                        a.id
                    )));
                }
                let addrs = [a.http, a.cluster];
                if addrs.contains(&b.http) || addrs.contains(&b.cluster) {
                    return Err(ConfigError::Invalid(format!(
                        "nodes {} and {} share an address",
                        a.id, b.id
                    )));
                }
                // Caught here, before any node starts: at run time the second would find the
                // directory locked (`storage::data_dir`), and `cluster-up` restart it forever.
                if a.data_dir_in(base)? == b.data_dir_in(base)? {
                    return Err(ConfigError::Invalid(format!(
                        "nodes {} and {} share a data_dir: each node needs its own",
                        a.id, b.id
                    )));
                }
            }
            if a.http == a.cluster {
                return Err(ConfigError::Invalid(format!(
                    "node {} uses one address for http and cluster",
                    a.id
                )));
            }
        }
        let node = match node_id {
            Some(id) => self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
                let known: Vec<_> = self.nodes.iter().map(|n| n.id.as_str()).collect();
                ConfigError::Invalid(format!(
                    "node {id:?} is not in the file (known: {})",
                    known.join(", ")
                ))
            })?,
            None if self.nodes.len() == 1 => &self.nodes[0],
            None => {
                return Err(ConfigError::Invalid(
                    "the file lists several nodes: choose one with --node ID".into(),
                ))
            }
        };
        let data_dir = node.data_dir_in(base)?;
        let storage = StorageLocation::parse_with(
            &self.storage,
            base,
            &self.s3.clone().unwrap_or_default(),
            env,
        )?;
        let cookie = env
            .get("REEL_CLUSTER_COOKIE")
            .cloned()
            .or(self.cookie.clone())
            .filter(|c| !c.is_empty());
        if self.nodes.len() > 1 {
            if storage == StorageLocation::Memory {
                return Err(ConfigError::Invalid(
                    "a cluster needs shared storage: `memory:` is private to one process".into(),
                ));
            }
            if cookie.is_none() {
                return Err(ConfigError::Invalid(
                    "a cluster needs a shared secret: set REEL_CLUSTER_COOKIE or `cookie`".into(),
                ));
            }
        }
        let cookie = Secret::new(cookie.unwrap_or_else(|| "reel-single-node".into()));
        let config = Config {
            public_url: self.public_url.as_deref().map(public_url).transpose()?,
            forward_secret: (self.nodes.len() > 1).then(|| cookie.clone()),
            node_id: node.id.clone(),
            listen: node.http,
            data_dir,
            storage,
            workers: node.workers,
            processing: self.processing,
            limits: self.limits,
            cluster: Some(ClusterConfig {
                listen: node.cluster,
                cookie,
                members: self
                    .nodes
                    .iter()
                    .map(|n| (n.id.clone(), n.http, n.cluster))
                    .collect(),
                heartbeat: Duration::from_millis(self.cluster.heartbeat_ms.max(50)),
                fence_after: self.cluster.fence_after.max(1),
            }),
            reconcile_every: Duration::from_secs(self.cluster.reconcile_seconds.max(1)),
            lease_ttl: Duration::from_secs(self.cluster.lease_seconds.max(1)),
            streaming: self.streaming,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// Why `text`, as a cluster file, is refused for `node`.
    fn refusal(text: &str, node: Option<&str>) -> String {
        let (_d, path) = write(text);
        Config::from_file(&path, node).unwrap_err().to_string()
    }

    const ONE: &str = r#"
storage = "local:objects"
[[node]]
id = "node-1"
http = "127.0.0.1:8080"
cluster = "127.0.0.1:9080"
"#;

    #[test]
    fn the_stop_drain_is_read_defaults_to_10_s_and_is_bounded() {
        let (_d, path) = write(ONE);
        let c = Config::from_file(&path, None).unwrap();
        assert_eq!(c.limits.shutdown_drain(), Duration::from_secs(10));
        let (_d, path) = write(&format!("{ONE}\n[limits]\nshutdown_drain_seconds = 0\n"));
        let c = Config::from_file(&path, None).unwrap();
        assert_eq!(c.limits.shutdown_drain(), Duration::ZERO);
        let e = refusal(
            &format!("{ONE}\n[limits]\nshutdown_drain_seconds = 3601\n"),
            None,
        );
        assert!(e.contains("shutdown_drain_seconds"), "{e}");
    }

    #[test]
    fn one_node_file_gives_defaults_and_resolves_relative_paths() {
        let (dir, path) = write(ONE);
        let c = Config::from_file(&path, None).unwrap();
        assert_eq!(c.node_id, "node-1");
        assert_eq!(
            c.storage,
            StorageLocation::Local(dir.path().join("objects"))
        );
        assert_eq!(c.data_dir, dir.path().join("reel-data/node-1"));
        assert_eq!(c.processing.ladder.len(), 5);
        assert_eq!(c.workers, 2);
    }

    #[test]
    fn unknown_key_and_unknown_node_are_refused_with_names() {
        let e = refusal(&format!("{ONE}\nbogus = 1\n"), None);
        assert!(e.contains("bogus"), "{e}");
        let e = refusal(ONE, Some("node-9"));
        assert!(e.contains("node-9") && e.contains("node-1"), "{e}");
    }

    #[test]
    fn playback_log_bounds_are_read_and_a_zero_bound_is_refused() {
        let text =
            format!("{ONE}\n[streaming]\nlog_max_rows = 1000\nlog_file_mib = 8\nlog_files = 0\n");
        let (_d, path) = write(&text);
        let s = Config::from_file(&path, None).unwrap().streaming;
        assert_eq!((s.log_max_rows, s.log_file_mib, s.log_files), (1000, 8, 0));
        let e = refusal(&format!("{ONE}\n[streaming]\nlog_max_rows = 0\n"), None);
        assert!(e.contains("log_max_rows"), "{e}");
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let text = format!(
            "{ONE}\n[[node]]\nid = \"node-2\"\nhttp = \"127.0.0.1:8080\"\ncluster = \"127.0.0.1:9081\"\n"
        );
        let e = refusal(&text, Some("node-1"));
        assert!(e.contains("share an address"), "{e}");
    }

    #[test]
    fn two_nodes_with_one_data_dir_are_refused() {
        // Named, or one named as the other's default (reel-data/{id}), spelled differently.
        for second in [
            "data_dir = \"shared\"",
            "data_dir = \"./reel-data/node-1/\"",
        ] {
            let first = if second.contains("shared") {
                ONE.replace("[[node]]", "[[node]]\ndata_dir = \"shared\"")
            } else {
                ONE.to_string()
            };
            let text = format!(
                "{first}\n[[node]]\nid = \"node-2\"\n{second}\nhttp = \"127.0.0.1:8081\"\ncluster = \"127.0.0.1:9081\"\n"
            );
            let e = refusal(&text, Some("node-2"));
            assert!(
                e.contains("nodes node-1 and node-2 share a data_dir"),
                "{second}: {e}"
            );
        }
    }

    #[test]
    fn the_repository_cluster_toml_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let env =
            std::collections::HashMap::from([("REEL_CLUSTER_COOKIE".to_string(), "x".to_string())]);
        let c = Config::from_file_with_env(&path, Some("node-2"), &env).unwrap();
        assert_eq!(c.processing.ladder, default_ladder());
        assert_eq!(c.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.cluster.unwrap().members.len(), 3);
    }

    #[test]
    fn a_cluster_needs_a_cookie_and_shared_storage_and_never_prints_the_cookie() {
        let three = format!(
            "{ONE}\n[[node]]\nid = \"node-2\"\nhttp = \"127.0.0.1:8081\"\ncluster = \"127.0.0.1:9081\"\n"
        );
        let (_d, path) = write(&three);
        let none = std::collections::HashMap::new();
        let e = Config::from_file_with_env(&path, Some("node-1"), &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("REEL_CLUSTER_COOKIE"), "{e}");
        let env = std::collections::HashMap::from([(
            "REEL_CLUSTER_COOKIE".to_string(),
            "s3cret".to_string(),
        )]);
        let c = Config::from_file_with_env(&path, Some("node-2"), &env).unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.members.len(), 2);
        assert_eq!(cl.cookie.expose(), "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the cookie never reaches a log"
        );
        let (_d, path) = write(&three.replace("local:objects", "memory:"));
        let e = Config::from_file_with_env(&path, Some("node-1"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shared storage"), "{e}");
    }

    #[test]
    fn the_compose_cluster_file_parses_for_every_node() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose.cluster.toml");
        let env =
            std::collections::HashMap::from([("REEL_CLUSTER_COOKIE".to_string(), "x".to_string())]);
        for node in ["node-1", "node-2", "node-3"] {
            let c = Config::from_file_with_env(&path, Some(node), &env).unwrap();
            assert_eq!(c.data_dir, PathBuf::from(format!("/var/lib/reel/{node}")));
        }
    }

    #[test]
    fn the_upload_memory_budget_is_at_least_two_parts_on_s3_and_one_mib_elsewhere() {
        let (_d, path) = write(ONE);
        let mut c = Config::from_file(&path, None).unwrap();
        assert_eq!(c.limits.upload_buffer_mib, 256, "the default");
        c.limits.upload_buffer_mib = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("upload_buffer_mib"));
        c.limits.upload_buffer_mib = 1;
        c.validate().unwrap();
        assert_eq!(c.limits.upload_spool_mib, 4096, "the spool's default");
        c.limits.upload_spool_mib = 4 * 1024 * 1024 + 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("upload_spool_mib must be at most"), "{e}");
        c.limits.upload_spool_mib = 0;
        c.validate().unwrap();
        let text = ONE.replace("local:objects", "s3://reel-media")
            + "[s3]\nendpoint = \"http://127.0.0.1:8333\"\n";
        let (_d, path) = write(&text);
        let env: HashMap<String, String> =
            [("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let mut c = Config::from_file_with_env(&path, None, &env).unwrap();
        c.limits.upload_buffer_mib = 8;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least 16 with S3"), "{e}");
        c.limits.upload_buffer_mib = 16;
        c.validate().unwrap();
    }

    #[test]
    fn s3_storage_takes_the_table_first_then_the_environment() {
        let text = ONE.replace("local:objects", "s3://reel-media")
            + "[s3]\nendpoint = \"http://127.0.0.1:8333\"\n";
        let (_d, path) = write(&text);
        let env: HashMap<String, String> = [
            ("AWS_ACCESS_KEY_ID", "KEY"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_ENDPOINT_URL", "http://elsewhere:1"),
            ("AWS_REGION", "eu-west-3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Config::from_file_with_env(&path, None, &env).unwrap();
        let StorageLocation::S3(s3) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(s3.bucket, "reel-media");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(s3.region, "eu-west-3");
        assert_eq!(s3.access_key_id.as_deref(), Some("KEY"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRET"), "the secret is never printed");
        let e = StorageLocation::parse_with(
            "s3://Bad_Bucket",
            Path::new("."),
            &S3Settings::default(),
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("Bad_Bucket"), "{e}");
        let only_key: HashMap<String, String> =
            [("AWS_ACCESS_KEY_ID".to_string(), "KEY".to_string())].into();
        let e = StorageLocation::parse_with(
            "s3://b-1",
            Path::new("."),
            &S3Settings::default(),
            &only_key,
        )
        .unwrap_err();
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    }

    #[test]
    fn every_path_is_absolute_after_load_whatever_was_written() {
        let cwd = tempfile::tempdir().unwrap();
        let env = HashMap::from([("REEL_CLUSTER_COOKIE".to_string(), "x".to_string())]);
        // No flags at all: ./reel-data under the working directory, objects inside it.
        let c = ServeFlags::default().resolve(cwd.path(), &env).unwrap();
        assert_eq!(c.data_dir, cwd.path().join("reel-data"));
        assert_eq!(
            c.storage,
            StorageLocation::Local(cwd.path().join("reel-data/objects"))
        );
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        // A relative config path and the repository's relative keys: against the file's folder.
        std::fs::create_dir(cwd.path().join("conf")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml"),
            cwd.path().join("conf/cluster.toml"),
        )
        .unwrap();
        let flags = ServeFlags {
            config: Some("conf/cluster.toml".into()),
            node: Some("node-3".into()),
            ..Default::default()
        };
        let c = flags.resolve(cwd.path(), &env).unwrap();
        assert_eq!(c.data_dir, cwd.path().join("conf/reel-data/node-3"));
        assert_eq!(
            c.storage,
            StorageLocation::Local(cwd.path().join("conf/reel-data/objects"))
        );
        assert!(c.data_dir.is_absolute());
    }

    #[test]
    fn flags_given_with_a_config_file_win_over_it() {
        let cwd = tempfile::tempdir().unwrap();
        let (_d, path) = write(ONE);
        let flags = ServeFlags {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:18080".parse().unwrap()),
            data_dir: Some("elsewhere".into()),
            storage: Some("shared/objects".into()),
            ..Default::default()
        };
        let c = flags.resolve(cwd.path(), &HashMap::new()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(c.data_dir, cwd.path().join("elsewhere"));
        assert_eq!(
            c.storage,
            StorageLocation::Local(cwd.path().join("shared/objects"))
        );
        let e = ServeFlags {
            node: Some("node-2".into()),
            ..Default::default()
        }
        .resolve(cwd.path(), &HashMap::new())
        .unwrap_err()
        .to_string();
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn public_urls_are_http_urls_without_a_trailing_slash() {
        assert_eq!(
            public_url("https://videos.example.com/").unwrap(),
            "https://videos.example.com"
        );
        assert_eq!(
            public_url("http://127.0.0.1:8080/reel").unwrap(),
            "http://127.0.0.1:8080/reel"
        );
        for bad in [
            "videos.example.com",
            "ftp://x",
            "https://x/?a=1",
            "https://x/#f",
        ] {
            assert!(public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_config_built_by_hand_with_a_relative_path_is_refused() {
        let mut c = Config::single_node("/tmp/x", "127.0.0.1:0".parse().unwrap());
        c.data_dir = "reel-data".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        let mut c = Config::single_node("/tmp/x", "127.0.0.1:0".parse().unwrap());
        c.storage = StorageLocation::Local("objects".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = ProcessingConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 350,
            ..Default::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(350));
        assert_eq!(p.backoff(40), Duration::from_millis(350));
    }
}
