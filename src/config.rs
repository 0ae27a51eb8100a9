//! Configuration: the typed [`Config`] a node runs with, and the `cluster.toml` file it can be
//! read from.
//!
//! The file format is parsed with `serde` + `toml` into [`ClusterFile`] (unknown keys are
//! refused, so a typo is an error rather than a silently ignored setting) and then validated into
//! a [`Config`] for one node. Every number carries its unit in its name (`_seconds`, `_kbps`,
//! `_bytes`, `_ms`).

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 20 * 1024 * 1024 * 1024,
        }
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
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            cache_mib: 512,
            prefetch_depth: 1,
            max_prefetches: 32,
            session_idle_seconds: 300,
        }
    }
}

impl StreamingConfig {
    /// The cache budget in bytes.
    pub fn cache_bytes(&self) -> usize {
        (self.cache_mib.saturating_mul(1024 * 1024)).min(usize::MAX as u64) as usize
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
}

impl StorageLocation {
    /// Parse `local:DIR`, a bare path, or `memory:`. A relative path is taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        if text == "memory:" {
            return Ok(Self::Memory);
        }
        if text.starts_with("s3://") {
            return Err(ConfigError::Invalid(
                "s3:// storage is not built yet (see the uploads issue); use a local directory"
                    .into(),
            ));
        }
        let path = text.strip_prefix("local:").unwrap_or(text);
        if path.is_empty() {
            return Err(ConfigError::Invalid("storage path is empty".into()));
        }
        let path = PathBuf::from(path);
        Ok(Self::Local(if path.is_absolute() {
            path
        } else {
            base.join(path)
        }))
    }
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
    /// Segment cache and read-ahead.
    pub streaming: StreamingConfig,
}

impl Config {
    /// The embedded default for one node: objects under `DATA_DIR/objects`, SQLite under
    /// `DATA_DIR`, the default ladder, two workers.
    pub fn single_node(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        let data_dir = data_dir.into();
        Self {
            node_id: "node-1".into(),
            listen,
            storage: StorageLocation::Local(data_dir.join("objects")),
            data_dir,
            workers: 2,
            processing: ProcessingConfig::default(),
            limits: Limits::default(),
            streaming: StreamingConfig::default(),
        }
    }

    /// Read `cluster.toml` and pick the node `node_id` (or the only node when `None`).
    ///
    /// Errors: unreadable file, unknown keys, an unknown node id, duplicate addresses, an invalid
    /// ladder.
    pub fn from_file(path: &Path, node_id: Option<&str>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ClusterFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.into_config(node_id, base)
    }

    /// Check what cannot work; called by `from_file` and by `run`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.processing.validate()?;
        self.streaming.validate()?;
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::Invalid(
                "workers must be between 1 and 64".into(),
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

/// The `cluster.toml` file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Shared storage: `local:DIR` (or a bare path) shared by every node, or `memory:`.
    pub storage: String,
    /// Processing settings and the ladder.
    #[serde(default)]
    pub processing: ProcessingConfig,
    /// Input limits.
    #[serde(default)]
    pub limits: Limits,
    /// Segment cache and read-ahead.
    #[serde(default)]
    pub streaming: StreamingConfig,
    /// The nodes.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

impl ClusterFile {
    fn into_config(self, node_id: Option<&str>, base: &Path) -> Result<Config, ConfigError> {
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
        let data_dir = match &node.data_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => base.join(d),
            None => base.join("reel-data").join(&node.id),
        };
        let config = Config {
            node_id: node.id.clone(),
            listen: node.http,
            data_dir,
            storage: StorageLocation::parse(&self.storage, base)?,
            workers: node.workers,
            processing: self.processing,
            limits: self.limits,
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

    const ONE: &str = r#"
storage = "local:objects"
[[node]]
id = "node-1"
http = "127.0.0.1:8080"
cluster = "127.0.0.1:9080"
"#;

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
        let (_d, path) = write(&format!("{ONE}\nbogus = 1\n"));
        let e = Config::from_file(&path, None).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let (_d, path) = write(ONE);
        let e = Config::from_file(&path, Some("node-9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node-9") && e.contains("node-1"), "{e}");
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let text = format!(
            "{ONE}\n[[node]]\nid = \"node-2\"\nhttp = \"127.0.0.1:8080\"\ncluster = \"127.0.0.1:9081\"\n"
        );
        let (_d, path) = write(&text);
        let e = Config::from_file(&path, Some("node-1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("share an address"), "{e}");
    }

    #[test]
    fn the_repository_cluster_toml_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let c = Config::from_file(&path, Some("node-1")).unwrap();
        assert_eq!(c.processing.ladder, default_ladder());
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
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
