//! The values that move between stages: the video record and its lifecycle state.
//!
//! The record lives in the object store at `videos/{id}/record.json` and is the system of record
//! for a video (design brief section 2). Lifecycle (seed rule 4): `uploaded → processing →
//! ready | failed`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::media::ladder::Rendition;
use crate::media::playlist::RenditionOutput;
use crate::media::probe::SourceInfo;

/// Lifecycle state of a video (seed rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoState {
    /// The source is stored; processing has not started.
    Uploaded,
    /// A job validates and transcodes the source.
    Processing,
    /// The multivariant playlist exists; the video streams. Terminal.
    Ready,
    /// The source is not a usable video, or processing gave up. Terminal; `error` says why.
    Failed,
}

impl VideoState {
    /// Ready and failed never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }

    /// The lowercase name used in JSON and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// A rendition as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenditionSummary {
    /// Rendition name (`720p`).
    pub name: String,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// bit/s: the measured peak segment bit rate once ready (`BANDWIDTH`), the planned video +
    /// audio bitrate before.
    pub bandwidth: u64,
    /// bit/s: measured average once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_bandwidth: Option<u64>,
    /// Number of segments once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<usize>,
    /// Once ready: the directory its files are served from, under `videos/{id}/`
    /// (`{rendition}/{attempt token}`, see `storage::keys`). Absent in records written before
    /// attempt directories: the rendition's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

impl RenditionSummary {
    /// The summary of a planned rendition.
    pub fn planned(r: &Rendition) -> Self {
        Self {
            name: r.name.clone(),
            width: r.width,
            height: r.height,
            bandwidth: (r.video_kbps as u64 + r.audio_kbps as u64) * 1000,
            average_bandwidth: None,
            segments: None,
            dir: None,
        }
    }

    /// The summary of a finished rendition.
    pub fn finished(o: &RenditionOutput) -> Self {
        Self {
            bandwidth: o.peak_bandwidth(),
            average_bandwidth: Some(o.average_bandwidth()),
            segments: Some(o.segments.len()),
            dir: Some(o.stored_dir().to_string()),
            ..Self::planned(&o.rendition)
        }
    }
}

/// The video record: `videos/{id}/record.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoRecord {
    /// Content address: see [`video_id`].
    pub video_id: String,
    /// Lifecycle state.
    pub state: VideoState,
    /// SHA-256 of the source bytes, lowercase hex.
    pub source_sha256: String,
    /// Size of the source, bytes.
    pub source_bytes: u64,
    /// Processing profile the id was derived with.
    pub profile: String,
    /// File name the client gave, if any (informational only).
    #[serde(default)]
    pub filename: Option<String>,
    /// Probe result once validated.
    #[serde(default)]
    pub source: Option<SourceInfo>,
    /// The planned (then finished) renditions.
    #[serde(default)]
    pub renditions: Vec<RenditionSummary>,
    /// Why the video failed: a sentence a person can act on.
    #[serde(default)]
    pub error: Option<String>,
    /// When the source was stored (RFC 3339, UTC).
    pub created_at: String,
    /// Last change (RFC 3339, UTC).
    pub updated_at: String,
    /// When it became ready.
    #[serde(default)]
    pub ready_at: Option<String>,
    /// The lease epoch of the owner that wrote this version (0: written by ingest, before any
    /// owner). The store refuses a write whose epoch is older than the stored one
    /// ([`crate::storage::Storage::save_record_fenced`]).
    #[serde(default)]
    pub epoch: u64,
}

impl VideoRecord {
    /// A fresh record in state `uploaded`.
    pub fn uploaded(
        video_id: String,
        source_sha256: String,
        source_bytes: u64,
        profile: String,
        filename: Option<String>,
    ) -> Self {
        let now = now_rfc3339();
        Self {
            video_id,
            state: VideoState::Uploaded,
            source_sha256,
            source_bytes,
            profile,
            filename,
            source: None,
            renditions: Vec::new(),
            error: None,
            created_at: now.clone(),
            updated_at: now,
            ready_at: None,
            epoch: 0,
        }
    }

    /// Set `updated_at` to now.
    pub fn touch(&mut self) {
        self.updated_at = now_rfc3339();
    }
}

/// The content address of a source: the first 32 hex digits of
/// `SHA-256("{sha256_hex}:{profile}")`, where `sha256_hex` is the SHA-256 of the source bytes.
///
/// Deriving from the byte digest (not the bytes) lets a client that declares the SHA-256 before
/// sending learn the id without a transfer (design brief section 2; seed rule 1).
pub fn video_id(source_sha256_hex: &str, profile: &str) -> String {
    let digest = Sha256::digest(format!("{source_sha256_hex}:{profile}").as_bytes());
    hex::encode(digest)[..32].to_string()
}

/// Now, RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// `ms` (milliseconds since the Unix epoch; before it counts as the epoch) as RFC 3339 with
/// milliseconds, UTC: the [`now_rfc3339`] form of a time taken earlier with [`now_ms`].
pub fn rfc3339_ms(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    write_rfc3339_ms(&mut s, ms);
    s
}

/// [`rfc3339_ms`] appended to `out`.
pub fn write_rfc3339_ms(out: &mut String, ms: i64) {
    use std::fmt::Write;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(t));
}

/// Now, milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_id_depends_on_bytes_and_profile_only() {
        let a = video_id(&hex::encode(Sha256::digest(b"abc")), "default");
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a, video_id(&hex::encode(Sha256::digest(b"abc")), "default"));
        assert_ne!(a, video_id(&hex::encode(Sha256::digest(b"abd")), "default"));
        assert_ne!(a, video_id(&hex::encode(Sha256::digest(b"abc")), "other"));
    }

    #[test]
    fn state_serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&VideoState::Ready).unwrap(),
            "\"ready\""
        );
        assert!(VideoState::Failed.is_terminal() && !VideoState::Processing.is_terminal());
    }
}
