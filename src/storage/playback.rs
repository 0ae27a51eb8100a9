//! The playback log (issue 4, seed rules 8 and 9, seed section "Logging Requirements"): one
//! record per `SERVE`, `PREFETCH_START` and `PREFETCH_RESULT` (plus session lifecycle records),
//! written twice on the node that served it:
//!
//! - as JSON lines, one object per line, in `{data_dir}/playback.jsonl` (easy to `grep`/`jq`);
//! - as rows of the `playback_events` table of the node's SQLite file (`reel.sqlite`), in append
//!   order; `playback_sessions` holds where each session's rows lie (its spans of row numbers),
//!   so that one session is read without reading the table and a record costs no index insert.
//!
//! Writes never block an async task: [`PlaybackLog::record`] sends the record over a channel to
//! one dedicated writer thread, which lets records gather for [`LINGER`] after the first, then
//! drains whatever is queued and writes it as one batch (one SQLite transaction, one file
//! write). [`PlaybackLog::flush`] is a barrier: it completes once
//! every record sent before it is on disk (tests use it instead of sleeping).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::model::{now_ms, write_rfc3339_ms};

/// The file name of the JSON-lines playback log inside a node's data directory.
pub const JSONL_NAME: &str = "playback.jsonl";
/// The SQLite file (shared with the event log) inside a node's data directory.
pub const SQLITE_NAME: &str = "reel.sqlite";

/// What a playback record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlaybackEvent {
    /// A segment was served to the player (seed: `SERVE`).
    Serve,
    /// A read-ahead fetch of a segment started (seed: `PREFETCH_START`).
    PrefetchStart,
    /// A read-ahead fetch ended, or was skipped; see `result` (seed: `PREFETCH_RESULT`).
    PrefetchResult,
    /// A session was created by a multivariant playlist request on this node.
    SessionStart,
    /// This node took over a session whose home node is another (dead) node, or restarted a
    /// session of its own that had expired; `detail` says which. The cache is cold.
    SessionReassigned,
    /// A session stopped (idle timeout or node shutdown).
    SessionEnd,
}

impl PlaybackEvent {
    /// The name written to the logs (`SERVE`, `PREFETCH_START`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serve => "SERVE",
            Self::PrefetchStart => "PREFETCH_START",
            Self::PrefetchResult => "PREFETCH_RESULT",
            Self::SessionStart => "SESSION_START",
            Self::SessionReassigned => "SESSION_REASSIGNED",
            Self::SessionEnd => "SESSION_END",
        }
    }
}

/// Whether the bytes were already in this node's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// Served from the cache, or by joining a read already in flight: no object-store read was
    /// made for this request.
    Hit,
    /// This request read the object store.
    Miss,
}

impl CacheOutcome {
    /// `hit` or `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// The rendition a record concerns, as the multivariant playlist describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionTag {
    /// Rendition name (`720p`).
    pub name: String,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Peak bit rate, bit/s (the variant stream's `BANDWIDTH`, RFC 8216 section 4.3.4.2).
    pub bandwidth: u64,
}

/// One playback log record: one JSON line and one SQLite row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybackRecord {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The same instant, RFC 3339, UTC. Written by the log's writer from `ts_ms` (formatting
    /// it is kept off the request path); empty in a record not yet written.
    pub ts: String,
    /// Event type.
    pub event: PlaybackEvent,
    /// The video.
    pub video_id: String,
    /// The playback session (`{home_node}-{16 hex}`).
    pub session_id: String,
    /// The node that served (or prefetched) it: the node that wrote this record.
    pub node_id: String,
    /// The rendition, for segment records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendition: Option<RenditionTag>,
    /// Segment index (`00007.m4s` is 7), for segment records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<usize>,
    /// Cache hit or miss: for `SERVE`, where the bytes came from; for `PREFETCH_START`, whether
    /// the segment was already cached or being read (`hit`: nothing to fetch) or not (`miss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheOutcome>,
    /// For `PREFETCH_RESULT`: `fetched`, `cached` (already there), `skipped_busy` (too many
    /// prefetches running), `not_found` or `error`. For `SERVE`: `ok` or `range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Bytes served or fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Time the request or fetch took, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Free text for people (why a session was reassigned, an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl PlaybackRecord {
    /// A record of `event` stamped now, without rendition or segment.
    pub fn new(event: PlaybackEvent, video_id: &str, session_id: &str, node_id: &str) -> Self {
        Self {
            ts_ms: now_ms(),
            ts: String::new(),
            event,
            video_id: video_id.to_string(),
            session_id: session_id.to_string(),
            node_id: node_id.to_string(),
            rendition: None,
            segment: None,
            cache: None,
            result: None,
            bytes: None,
            duration_ms: None,
            detail: None,
        }
    }
}

/// The ids every record of one playback session carries, made once per session and shared by
/// its [`SegmentRecord`]s, with their JSON (made once too: escaping them for every record was
/// about a tenth of the log writer's CPU, issue 11 P1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIds {
    video_id: String,
    session_id: String,
    node_id: String,
    /// `"video_id":…,"session_id":…,"node_id":…`, as serde_json writes these three fields of
    /// a [`PlaybackRecord`]. The ids are private, so it never goes stale.
    json: Box<str>,
}

impl SessionIds {
    /// The ids of session `session_id` playing `video_id`, served by node `node_id`.
    pub fn new(video_id: String, session_id: String, node_id: String) -> Self {
        let mut json = Vec::with_capacity(48 + video_id.len() + session_id.len() + node_id.len());
        for (i, (key, value)) in [
            ("video_id", &video_id),
            ("session_id", &session_id),
            ("node_id", &node_id),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                json.push(b',');
            }
            json_str(&mut json, key);
            json.push(b':');
            json_str(&mut json, value);
        }
        Self {
            video_id,
            session_id,
            node_id,
            // serde_json writes UTF-8 only.
            json: String::from_utf8(json).unwrap_or_default().into_boxed_str(),
        }
    }

    /// The video.
    pub fn video_id(&self) -> &str {
        &self.video_id
    }

    /// The playback session (`{home_node}-{16 hex}`).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The node that serves it: the node that writes its records.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// Append `s` to `buf` as a JSON string, exactly as serde_json writes it: as it is between
/// quotes when nothing in it needs escaping (the ids, times and fixed texts of the log), else
/// through serde_json.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing to a Vec fails only for a value serde cannot express; a str always can.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// A segment record as a request's task hands it to the log: the session's ids and the
/// rendition are shared, not copied, and the fixed texts are `'static`, so making one
/// allocates nothing. The writer writes it as it is, through a borrowed row, as the
/// [`PlaybackRecord`] [`SegmentRecord::into_record`] makes of it. Records made on the request
/// threads and freed on the writer's (six allocations for a `SERVE`) kept glibc's per-thread
/// caches empty on one side and full on the other: each allocation went to the shared arena,
/// about 5 % of a node's user CPU serving cached segments (issue 11, P1).
#[derive(Debug, Clone)]
pub struct SegmentRecord {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Event type.
    pub event: PlaybackEvent,
    /// The session's ids.
    pub ids: Arc<SessionIds>,
    /// The rendition.
    pub rendition: Arc<RenditionTag>,
    /// Segment index.
    pub segment: usize,
    /// As [`PlaybackRecord::cache`].
    pub cache: Option<CacheOutcome>,
    /// As [`PlaybackRecord::result`].
    pub result: Option<&'static str>,
    /// Bytes served or fetched.
    pub bytes: Option<u64>,
    /// Time the request or fetch took, milliseconds.
    pub duration_ms: Option<u64>,
}

impl SegmentRecord {
    /// A record of `event` for segment `segment` of `rendition`, stamped now.
    pub fn new(
        event: PlaybackEvent,
        ids: &Arc<SessionIds>,
        rendition: &Arc<RenditionTag>,
        segment: usize,
    ) -> Self {
        Self {
            ts_ms: now_ms(),
            event,
            ids: ids.clone(),
            rendition: rendition.clone(),
            segment,
            cache: None,
            result: None,
            bytes: None,
            duration_ms: None,
        }
    }

    /// The full record, as written to both logs.
    pub fn into_record(self) -> PlaybackRecord {
        PlaybackRecord {
            ts_ms: self.ts_ms,
            ts: String::new(),
            event: self.event,
            video_id: self.ids.video_id.clone(),
            session_id: self.ids.session_id.clone(),
            node_id: self.ids.node_id.clone(),
            rendition: Some((*self.rendition).clone()),
            segment: Some(self.segment),
            cache: self.cache,
            result: self.result.map(str::to_string),
            bytes: self.bytes,
            duration_ms: self.duration_ms,
            detail: None,
        }
    }
}

enum Cmd {
    Record(Box<PlaybackRecord>),
    Segment(SegmentRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Records queued for the writer at most: beyond this (the disk cannot keep up), a record is
/// shed and counted rather than held in memory without bound (issue 11). The queue's slots
/// take about 6 MB (a [`SegmentRecord`] is held in its slot), what the full records hold about
/// 30 MB more.
pub const QUEUE_CAPACITY: usize = 65_536;

/// How much of the playback log a node keeps on disk (`[streaming]` `log_*` settings). The log
/// is local and not replicated (seed: "Local Event Logs"); without a bound it grows for as long
/// as the node serves, by about 750 bytes per segment request (three records, in two files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows of `playback_events` kept at most; the oldest are deleted first.
    pub max_rows: u64,
    /// `playback.jsonl` is rotated once it reaches this size, bytes.
    pub file_bytes: u64,
    /// Rotated files kept (`playback.jsonl.1` is the newest); 0 keeps none.
    pub files: u32,
}

impl Retention {
    /// The defaults (also `[streaming]`'s): 4,000,000 rows, 256 MiB files, 4 rotated files.
    pub const DEFAULT: Self = Self {
        max_rows: 4_000_000,
        file_bytes: 256 << 20,
        files: 4,
    };
}

impl Default for Retention {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Handle on a node's playback log. Cheap to clone; the writer thread ends when the last handle
/// is dropped.
#[derive(Clone)]
pub struct PlaybackLog {
    tx: mpsc::SyncSender<Cmd>,
    jsonl: PathBuf,
    /// Records shed since the node started because the queue was full.
    shed: Arc<AtomicU64>,
}

impl std::fmt::Debug for PlaybackLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackLog")
            .field("jsonl", &self.jsonl)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS playback_events (
    seq         INTEGER PRIMARY KEY, -- the rowid; only the oldest rows are deleted (trim keeps
                                     -- the newest), so it only grows and has no gaps
    ts_ms       INTEGER NOT NULL,
    ts          TEXT NOT NULL,
    event       TEXT NOT NULL,
    video_id    TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    rendition   TEXT,
    width       INTEGER,
    height      INTEGER,
    bandwidth   INTEGER,
    segment     INTEGER,
    cache       TEXT,
    result      TEXT,
    bytes       INTEGER,
    duration_ms INTEGER,
    detail      TEXT
);
-- Where each session's records lie in playback_events: rows first_seq..=last_seq hold every
-- record of the session written in that span (last_seq NULL: to the end of the table). One
-- row per span; a session has several when it ended and came back, or the node restarted.
CREATE TABLE IF NOT EXISTS playback_sessions (
    session_id  TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER,
    PRIMARY KEY (session_id, first_seq)
);
";

/// Databases written before the spans table had an index on `(session_id, seq)` instead: turn
/// it into one closed span per session and drop it.
const MIGRATE_SESSION_INDEX: &str = "
BEGIN IMMEDIATE;
INSERT OR IGNORE INTO playback_sessions (session_id, first_seq, last_seq)
    SELECT session_id, min(seq), max(seq) FROM playback_events GROUP BY session_id;
DROP INDEX IF EXISTS playback_session;
COMMIT;
";

fn open_db(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    let old_index: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = 'playback_session'",
        [],
        |r| r.get(0),
    )?;
    if old_index {
        conn.execute_batch(MIGRATE_SESSION_INDEX)?;
    }
    Ok(conn)
}

const INSERT: &str = "INSERT INTO playback_events (ts_ms, ts, event, video_id, session_id,
    node_id, rendition, width, height, bandwidth, segment, cache, result, bytes, duration_ms, detail)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

fn insert(stmt: &mut rusqlite::CachedStatement<'_>, r: &Row<'_>) -> Result<(), rusqlite::Error> {
    let rend = r.rendition.as_ref();
    stmt.execute(params![
        r.ts_ms,
        r.ts,
        r.event.as_str(),
        r.video_id,
        r.session_id,
        r.node_id,
        rend.map(|x| x.name.as_str()),
        rend.map(|x| x.width),
        rend.map(|x| x.height),
        rend.map(|x| x.bandwidth as i64),
        r.segment.map(|s| s as i64),
        r.cache.map(|c| c.as_str()),
        r.result,
        r.bytes.map(|b| b as i64),
        r.duration_ms.map(|b| b as i64),
        r.detail,
    ])?;
    Ok(())
}

/// The sessions whose span in `playback_sessions` this writer has opened and not yet closed,
/// with the span's `first_seq`. Bounded by the sessions that log without ending: past
/// [`MAX_OPEN_SPANS`] it is emptied, which only opens new spans (a span without an end reads to
/// the end of the table, so none is lost).
#[derive(Default)]
struct Spans {
    open: std::collections::HashMap<String, i64>,
}

/// Open spans a writer remembers at most (a node's sessions are bounded by
/// `streaming.max_sessions`, 50,000 by default).
const MAX_OPEN_SPANS: usize = 200_000;

impl Spans {
    /// Note that record `r` was written as row `seq`: open the session's span on its first
    /// record, close it on `SESSION_END`. Runs inside the batch's transaction.
    fn note(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        r: &Row<'_>,
        seq: i64,
    ) -> Result<(), rusqlite::Error> {
        let first = match self.open.get(r.session_id) {
            Some(&first) => first,
            None => {
                if self.open.len() >= MAX_OPEN_SPANS {
                    self.open.clear();
                }
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO playback_sessions (session_id, first_seq) VALUES (?1, ?2)",
                )?
                .execute(params![r.session_id, seq])?;
                self.open.insert(r.session_id.to_string(), seq);
                seq
            }
        };
        if r.event == PlaybackEvent::SessionEnd {
            tx.prepare_cached(
                "UPDATE playback_sessions SET last_seq = ?3 WHERE session_id = ?1 AND first_seq = ?2",
            )?
            .execute(params![r.session_id, first, seq])?;
            self.open.remove(r.session_id);
        }
        Ok(())
    }
}

/// A record waiting in the writer's batch, as it was queued.
enum Queued {
    Full(Box<PlaybackRecord>),
    Segment(SegmentRecord),
}

impl Queued {
    fn ts_ms(&self) -> i64 {
        match self {
            Queued::Full(r) => r.ts_ms,
            Queued::Segment(r) => r.ts_ms,
        }
    }

    /// The record as written, `ts` its RFC 3339 time (a full record's own, when it has one).
    fn row<'a>(&'a self, ts: &'a str) -> Row<'a> {
        match self {
            Queued::Full(r) => Row {
                ts_ms: r.ts_ms,
                ts: if r.ts.is_empty() { ts } else { &r.ts },
                event: r.event,
                video_id: &r.video_id,
                session_id: &r.session_id,
                node_id: &r.node_id,
                rendition: r.rendition.as_ref(),
                segment: r.segment,
                cache: r.cache,
                result: r.result.as_deref(),
                bytes: r.bytes,
                duration_ms: r.duration_ms,
                detail: r.detail.as_deref(),
            },
            Queued::Segment(r) => Row {
                ts_ms: r.ts_ms,
                ts,
                event: r.event,
                video_id: &r.ids.video_id,
                session_id: &r.ids.session_id,
                node_id: &r.ids.node_id,
                rendition: Some(&r.rendition),
                segment: Some(r.segment),
                cache: r.cache,
                result: r.result,
                bytes: r.bytes,
                duration_ms: r.duration_ms,
                detail: None,
            },
        }
    }
}

/// A record as the writer writes it: [`PlaybackRecord`]'s fields, in its order and with its
/// serde attributes, borrowed from the queued record. The SQLite row is made from it, and so
/// is a full record's JSON line (a segment record's is written by [`segment_line`], to the
/// same bytes), so a [`SegmentRecord`]'s strings are never copied: making full records of a
/// batch (and their RFC 3339 times) was about a quarter of the writer's CPU in `malloc` and
/// `free` (issue 11, P1). A test checks that it serialises exactly as the record does.
#[derive(Serialize)]
struct Row<'a> {
    ts_ms: i64,
    ts: &'a str,
    event: PlaybackEvent,
    video_id: &'a str,
    session_id: &'a str,
    node_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rendition: Option<&'a RenditionTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<CacheOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// The RFC 3339 times of a batch's records, back to back in one string kept between batches.
#[derive(Default)]
struct Times {
    text: String,
    /// Where each record's time ends in `text`.
    ends: Vec<usize>,
}

impl Times {
    fn fill(&mut self, batch: &[Queued]) {
        self.text.clear();
        self.ends.clear();
        for q in batch {
            write_rfc3339_ms(&mut self.text, q.ts_ms());
            self.ends.push(self.text.len());
        }
    }

    /// The time of the batch's `i`th record.
    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

fn write_batch(
    conn: &mut Connection,
    file: &mut JsonLines,
    spans: &mut Spans,
    times: &mut Times,
    batch: &[Queued],
) {
    times.fill(batch);
    if let Err(e) = file.append(batch, times) {
        tracing::error!("playback log file write failed: {e}");
    }
    // Rows are appended in rowid order and nothing indexes them by session: an index keyed by
    // session id took a random page for every record once thousands of sessions interleave
    // (about 50 us of the writer's CPU per request at 12,000 sessions, issue 11 P3). Each
    // session's span is written once when it opens and once when it ends instead.
    let res = conn.transaction().and_then(|tx| {
        {
            // Looked up once per batch: the statement cache hashes the whole SQL text.
            let mut stmt = tx.prepare_cached(INSERT)?;
            for (i, q) in batch.iter().enumerate() {
                let r = q.row(times.get(i));
                insert(&mut stmt, &r)?;
                spans.note(&tx, &r, tx.last_insert_rowid())?;
            }
        }
        tx.commit()
    });
    if let Err(e) = res {
        // The spans opened in the lost transaction are gone with it: start again from none
        // (spans already written and never closed still read to the end of the table).
        spans.open.clear();
        tracing::error!("playback log SQLite write failed: {e}");
    }
}

/// The JSON-lines file, rotated by size: `playback.jsonl` is the current file,
/// `playback.jsonl.1` the newest rotated one, up to `.{files}`.
struct JsonLines {
    path: PathBuf,
    out: std::fs::File,
    /// A batch's lines, serialised before one write (kept between batches, up to
    /// [`LINE_BUFFER_KEPT`]).
    buf: Vec<u8>,
    /// Bytes in the current file.
    len: u64,
    retention: Retention,
    renditions: RenditionJson,
}

/// The JSON of the renditions that segment records named lately, keyed by the address of
/// their shared tag. Each entry holds its tag, so no other tag can take that address while the
/// entry is there. At most [`MAX_RENDITION_JSON`] entries: past that it is emptied.
#[derive(Default)]
struct RenditionJson {
    by_tag: std::collections::HashMap<usize, (Arc<RenditionTag>, Box<str>)>,
}

/// Renditions whose JSON the writer keeps at most (a node serves a few per video).
const MAX_RENDITION_JSON: usize = 1024;

impl RenditionJson {
    /// `tag` as serde_json writes it (`{"name":…,"width":…,"height":…,"bandwidth":…}`).
    fn json(&mut self, tag: &Arc<RenditionTag>) -> &str {
        let key = Arc::as_ptr(tag) as usize;
        if self.by_tag.len() >= MAX_RENDITION_JSON && !self.by_tag.contains_key(&key) {
            self.by_tag.clear();
        }
        &self
            .by_tag
            .entry(key)
            .or_insert_with(|| {
                // A RenditionTag always serialises (strings and numbers).
                let json = serde_json::to_string(&**tag).unwrap_or_default();
                (tag.clone(), json.into_boxed_str())
            })
            .1
    }
}

/// Append the JSON line of segment record `r` stamped `ts` (its RFC 3339 time), without the
/// newline: the bytes serde_json writes for its [`Row`] (a test holds them equal), made from
/// the session's and the rendition's JSON written once, and the record's numbers and fixed
/// texts. serde_json wrote some forty fragments a record and escaped every string again.
fn segment_line(buf: &mut Vec<u8>, r: &SegmentRecord, ts: &str, rendition: &str) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"ts_ms\":");
    buf.extend_from_slice(n.format(r.ts_ms).as_bytes());
    buf.extend_from_slice(b",\"ts\":");
    json_str(buf, ts);
    buf.extend_from_slice(b",\"event\":");
    json_str(buf, r.event.as_str());
    buf.push(b',');
    buf.extend_from_slice(r.ids.json.as_bytes());
    buf.extend_from_slice(b",\"rendition\":");
    buf.extend_from_slice(rendition.as_bytes());
    buf.extend_from_slice(b",\"segment\":");
    buf.extend_from_slice(n.format(r.segment).as_bytes());
    if let Some(cache) = r.cache {
        buf.extend_from_slice(b",\"cache\":");
        json_str(buf, cache.as_str());
    }
    if let Some(result) = r.result {
        buf.extend_from_slice(b",\"result\":");
        json_str(buf, result);
    }
    if let Some(bytes) = r.bytes {
        buf.extend_from_slice(b",\"bytes\":");
        buf.extend_from_slice(n.format(bytes).as_bytes());
    }
    if let Some(ms) = r.duration_ms {
        buf.extend_from_slice(b",\"duration_ms\":");
        buf.extend_from_slice(n.format(ms).as_bytes());
    }
    buf.push(b'}');
}

impl JsonLines {
    fn open(path: PathBuf, retention: Retention) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {path:?}: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot open {path:?}: {e}"))?
            .len();
        Ok(Self {
            path,
            out: file,
            buf: Vec::new(),
            len,
            retention,
            renditions: RenditionJson::default(),
        })
    }

    /// Append one line per record, then rotate if the file has reached its size: a batch is
    /// never split between two files.
    fn append(&mut self, batch: &[Queued], times: &Times) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (i, q) in batch.iter().enumerate() {
            match q {
                Queued::Segment(r) => {
                    let rendition = self.renditions.json(&r.rendition);
                    segment_line(&mut buf, r, times.get(i), rendition);
                }
                Queued::Full(_) => serde_json::to_writer(&mut buf, &q.row(times.get(i)))?,
            }
            buf.push(b'\n');
        }
        // Serialised into memory first: serde_json writes a record as some forty fragments, and
        // through a buffered file each was a call of its own (a tenth of the writer's CPU).
        let res = self.out.write_all(&buf);
        self.len += buf.len() as u64;
        if buf.capacity() <= LINE_BUFFER_KEPT {
            self.buf = buf;
        }
        res?;
        if self.len >= self.retention.file_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// `playback.jsonl.{k}` becomes `.{k+1}` (the one past `files` is deleted), the current
    /// file becomes `.1`, and a new current file is started.
    fn rotate(&mut self) -> std::io::Result<()> {
        let files = self.retention.files;
        let rotated = |k: u32| rotated_path(&self.path, k);
        if files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(rotated(files)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for k in (1..files).rev() {
                match std::fs::rename(rotated(k), rotated(k + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(1))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = file;
        self.len = 0;
        Ok(())
    }
}

/// The most memory the JSON-lines buffer keeps between batches, bytes (a full batch of
/// [`MAX_BATCH`] records is about 1.3 MB).
const LINE_BUFFER_KEPT: usize = 4 << 20;

/// `playback.jsonl.{k}` beside `current`.
fn rotated_path(current: &Path, k: u32) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// Rows one trim deletes at most, so that a log far over its bound (a lowered setting) is cut
/// down over several batches instead of holding the writer for one long transaction.
const TRIM_CHUNK: i64 = 50_000;

/// The first and last row numbers. Two subqueries: SQLite finds a lone `min()` or `max()` of
/// the rowid at one end of the table, but both in one `SELECT` read every row (6 ms at 200,000
/// rows, for every batch).
const TRIM_ENDS: &str =
    "SELECT (SELECT min(seq) FROM playback_events), (SELECT max(seq) FROM playback_events)";
/// The rows before a row number.
const TRIM_ROWS: &str = "DELETE FROM playback_events WHERE seq < ?1";

/// Delete the oldest rows of `playback_events` beyond `max_rows`, and the session spans that
/// end before what is left. Rows are numbered in append order without gaps, so the count is
/// `newest - oldest + 1` and the cut is a range of row numbers. Waits until the table is a
/// sixteenth over its bound, so that deleting goes by whole pages, not a few rows a batch.
fn trim(conn: &Connection, max_rows: u64) -> Result<(), rusqlite::Error> {
    let (oldest, newest): (Option<i64>, Option<i64>) =
        conn.query_row(TRIM_ENDS, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(oldest), Some(newest)) = (oldest, newest) else {
        return Ok(());
    };
    let max_rows = max_rows.min(i64::MAX as u64) as i64;
    let rows = newest - oldest + 1;
    if rows <= max_rows.saturating_add(max_rows / 16) {
        return Ok(());
    }
    // Keep rows cut..=newest.
    let cut = (newest - max_rows + 1).min(oldest + TRIM_CHUNK);
    let tx = conn.unchecked_transaction()?;
    tx.execute(TRIM_ROWS, [cut])?;
    tx.execute("DELETE FROM playback_sessions WHERE last_seq < ?1", [cut])?;
    tx.commit()
}

/// Most records one batch writes before answering waiting flushes.
const MAX_BATCH: usize = 4096;

/// How long the writer lets records gather after the first of a batch arrives, before it
/// writes them in one transaction. A record reaches the disk within about this long (plus the
/// write); a [`PlaybackLog::flush`] waits at most this long more. Under load this makes one
/// batch of hundreds of records instead of one small transaction (and one wake-up of this
/// thread) for every few: at 15,000 records a second, the writer's share of the node's CPU
/// fell from about a sixth (issue 11, P1).
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(25);

fn writer(
    rx: mpsc::Receiver<Cmd>,
    mut conn: Connection,
    mut file: JsonLines,
    retention: Retention,
    shed: Arc<AtomicU64>,
) {
    // The shed count the writer has logged so far.
    let mut logged = 0;
    let mut batch = Vec::new();
    let mut times = Times::default();
    let mut flushes = Vec::new();
    let mut spans = Spans::default();
    while let Ok(first) = rx.recv() {
        if !matches!(first, Cmd::Flush(_)) {
            // Let the batch gather: the senders queue without waking this thread.
            std::thread::sleep(LINGER);
        }
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Record(r) => batch.push(Queued::Full(r)),
                Cmd::Segment(r) => batch.push(Queued::Segment(r)),
                Cmd::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        write_batch(&mut conn, &mut file, &mut spans, &mut times, &batch);
        batch.clear();
        if let Err(e) = trim(&conn, retention.max_rows) {
            tracing::error!("playback log SQLite trim failed: {e}");
        }
        let total = shed.load(Ordering::Relaxed);
        let lost = total - logged;
        logged = total;
        if lost > 0 {
            tracing::warn!(
                records = lost,
                "playback log shed records: its queue of {QUEUE_CAPACITY} was full (the disk \
                 did not keep up)"
            );
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

impl PlaybackLog {
    /// Open (or create) the log of the node whose data directory is `data_dir`, keeping what
    /// `retention` allows, and start its writer thread. Spans of sessions left open by the
    /// node's previous run are closed (that run's writer is gone).
    ///
    /// Errors: the JSON-lines file or the SQLite table cannot be opened or created.
    pub fn open(data_dir: &Path, retention: Retention) -> Result<Self, String> {
        Self::open_bounded(data_dir, retention, QUEUE_CAPACITY)
    }

    fn open_bounded(
        data_dir: &Path,
        retention: Retention,
        capacity: usize,
    ) -> Result<Self, String> {
        let jsonl = data_dir.join(JSONL_NAME);
        let file = JsonLines::open(jsonl.clone(), retention)?;
        let db = data_dir.join(SQLITE_NAME);
        let err = |e: rusqlite::Error| format!("cannot open {db:?}: {e}");
        let conn = open_db(&db).map_err(err)?;
        conn.execute(
            "UPDATE playback_sessions SET last_seq = (SELECT max(seq) FROM playback_events)
             WHERE last_seq IS NULL",
            [],
        )
        .map_err(err)?;
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shed = Arc::new(AtomicU64::new(0));
        let writer_shed = shed.clone();
        std::thread::Builder::new()
            .name("playback-log".into())
            .spawn(move || writer(rx, conn, file, retention, writer_shed))
            .map_err(|e| format!("cannot start the playback log writer: {e}"))?;
        Ok(Self { tx, jsonl, shed })
    }

    /// Records shed since the node started because the writer's queue was full.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Queue one record; never blocks. When the queue is full ([`QUEUE_CAPACITY`]), the record
    /// is shed and counted; the writer logs the count. Also traced at debug level.
    pub fn record(&self, r: PlaybackRecord) {
        trace(
            r.event,
            &r.session_id,
            r.rendition.as_ref().map(|x| x.name.as_str()),
            r.segment,
            r.cache,
        );
        self.queue(Cmd::Record(Box::new(r)));
    }

    /// [`PlaybackLog::record`] for a [`SegmentRecord`]: queued without allocating.
    pub fn record_segment(&self, r: SegmentRecord) {
        trace(
            r.event,
            &r.ids.session_id,
            Some(&r.rendition.name),
            Some(r.segment),
            r.cache,
        );
        self.queue(Cmd::Segment(r));
    }

    fn queue(&self, cmd: Cmd) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(cmd) {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Completes once every record queued before this call is written to both logs.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A full queue makes the send wait for the writer: off the async threads.
        let sender = self.tx.clone();
        let sent = tokio::task::spawn_blocking(move || sender.send(Cmd::Flush(tx)).is_ok())
            .await
            .unwrap_or(false);
        if sent {
            let _ = rx.await;
        }
    }

    /// The JSON-lines file this log appends to.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl
    }
}

/// A record traced at debug level as it is queued.
fn trace(
    event: PlaybackEvent,
    session: &str,
    rendition: Option<&str>,
    segment: Option<usize>,
    cache: Option<CacheOutcome>,
) {
    tracing::debug!(
        event = event.as_str(),
        session,
        rendition = rendition.unwrap_or(""),
        segment = segment.unwrap_or(usize::MAX),
        cache = cache.map(|c| c.as_str()).unwrap_or(""),
        "playback"
    );
}

/// Read the records of `session_id` from the JSON-lines log of the node whose data directory is
/// `data_dir`: the rotated files oldest first (`playback.jsonl.N` ... `.1`), then the current
/// one, each in file order. A missing file gives no records; a malformed line is skipped. A
/// rotation while this reads can make it miss the records of the rotated file.
///
/// Errors: a file exists but cannot be read.
pub fn read_jsonl(data_dir: &Path, session_id: &str) -> Result<Vec<PlaybackRecord>, String> {
    let current = data_dir.join(JSONL_NAME);
    let mut paths = Vec::new();
    for k in 1.. {
        let p = rotated_path(&current, k);
        if !p.exists() {
            break;
        }
        paths.push(p);
    }
    paths.reverse();
    paths.push(current);
    let mut out = Vec::new();
    for path in paths {
        read_jsonl_file(&path, session_id, &mut out)?;
    }
    Ok(out)
}

fn read_jsonl_file(
    path: &Path,
    session_id: &str,
    out: &mut Vec<PlaybackRecord>,
) -> Result<(), String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {path:?}: {e}")),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("cannot read {path:?}: {e}"))?;
        // Cheap pre-filter before parsing.
        if !line.contains(session_id) {
            continue;
        }
        if let Ok(r) = serde_json::from_str::<PlaybackRecord>(&line) {
            if r.session_id == session_id {
                out.push(r);
            }
        }
    }
    Ok(())
}

/// The row spans that hold the records of one session: its `playback_sessions` spans, an open
/// end as `i64::MAX`, sorted and with overlapping spans merged. Pure, for the tests.
fn merge_spans(mut spans: Vec<(i64, Option<i64>)>) -> Vec<(i64, i64)> {
    spans.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(spans.len());
    for (first, last) in spans {
        let last = last.unwrap_or(i64::MAX);
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Read the records of `session_id` from the `playback_events` table of the node whose data
/// directory is `data_dir`, in append order. Reads only the rows of the session's spans
/// (`playback_sessions`), never the whole table.
///
/// Errors: the database cannot be opened or read.
pub fn read_sqlite(data_dir: &Path, session_id: &str) -> Result<Vec<PlaybackRecord>, String> {
    let db = data_dir.join(SQLITE_NAME);
    if !db.exists() {
        return Ok(Vec::new());
    }
    let err = |e: rusqlite::Error| format!("cannot read {db:?}: {e}");
    let conn = open_db(&db).map_err(err)?;
    let spans = conn
        .prepare("SELECT first_seq, last_seq FROM playback_sessions WHERE session_id = ?1")
        .and_then(|mut st| {
            st.query_map([session_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT ts_ms, ts, event, video_id, session_id, node_id, rendition, width, height,
                bandwidth, segment, cache, result, bytes, duration_ms, detail
             FROM playback_events WHERE seq BETWEEN ?2 AND ?3 AND session_id = ?1 ORDER BY seq",
        )
        .map_err(err)?;
    let mut out = Vec::new();
    for (first, last) in merge_spans(spans) {
        let rows = stmt
            .query_map(params![session_id, first, last], row_to_record)
            .map_err(err)?;
        for r in rows {
            out.push(r.map_err(err)?);
        }
    }
    Ok(out)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> Result<PlaybackRecord, rusqlite::Error> {
    let event: String = r.get(2)?;
    let rendition: Option<String> = r.get(6)?;
    let cache: Option<String> = r.get(11)?;
    Ok(PlaybackRecord {
        ts_ms: r.get(0)?,
        ts: r.get(1)?,
        event: serde_json::from_value(serde_json::Value::String(event))
            .unwrap_or(PlaybackEvent::Serve),
        video_id: r.get(3)?,
        session_id: r.get(4)?,
        node_id: r.get(5)?,
        rendition: match rendition {
            Some(name) => Some(RenditionTag {
                name,
                width: r.get::<_, Option<u32>>(7)?.unwrap_or(0),
                height: r.get::<_, Option<u32>>(8)?.unwrap_or(0),
                bandwidth: r.get::<_, Option<i64>>(9)?.unwrap_or(0) as u64,
            }),
            None => None,
        },
        segment: r.get::<_, Option<i64>>(10)?.map(|s| s as usize),
        cache: cache.and_then(|c| serde_json::from_value(serde_json::Value::String(c)).ok()),
        result: r.get(12)?,
        bytes: r.get::<_, Option<i64>>(13)?.map(|b| b as u64),
        duration_ms: r.get::<_, Option<i64>>(14)?.map(|b| b as u64),
        detail: r.get(15)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: when the disk cannot keep up (here: another connection holds SQLite's write
    /// lock), records beyond the queue are shed and counted, never held without bound and
    /// never lost silently: every record is either written or counted.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_queue_sheds_and_counts_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let log = PlaybackLog::open_bounded(dir.path(), Retention::default(), 4).unwrap();
        let blocker = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        for k in 0..200 {
            let mut r = PlaybackRecord::new(PlaybackEvent::Serve, "v", "n1-00bb", "n1");
            r.segment = Some(k);
            log.record(r);
        }
        let shed = log.shed_total();
        assert!(shed > 0, "a queue of 4 behind a locked disk shed nothing");
        blocker.execute_batch("COMMIT").unwrap();
        log.flush().await;
        let written = read_sqlite(dir.path(), "n1-00bb").unwrap().len() as u64;
        assert_eq!(written + shed, 200, "{written} written, {shed} shed");
    }

    #[tokio::test]
    async fn records_reach_both_logs_in_order_and_read_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        for k in 0..50 {
            let mut r = PlaybackRecord::new(PlaybackEvent::Serve, "v", "n1-00aa", "n1");
            r.segment = Some(k);
            r.cache = Some(CacheOutcome::Miss);
            r.rendition = Some(RenditionTag {
                name: "240p".into(),
                width: 320,
                height: 240,
                bandwidth: 400_000,
            });
            log.record(r);
        }
        log.record(PlaybackRecord::new(
            PlaybackEvent::Serve,
            "v",
            "other",
            "n1",
        ));
        log.flush().await;
        let a = read_jsonl(dir.path(), "n1-00aa").unwrap();
        let b = read_sqlite(dir.path(), "n1-00aa").unwrap();
        assert_eq!(a.len(), 50);
        assert_eq!(a, b);
        assert_eq!(a[7].segment, Some(7));
        // The writer stamps the RFC 3339 time from ts_ms: the same millisecond.
        let t = humantime::parse_rfc3339(&a[7].ts).unwrap();
        let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(ms, a[7].ts_ms, "{}", a[7].ts);
        let line = std::fs::read_to_string(dir.path().join(JSONL_NAME)).unwrap();
        assert!(line.starts_with("{\"ts_ms\":"), "{line}");
        assert!(line.contains("\"event\":\"SERVE\""));
        assert!(line.contains("\"cache\":\"miss\""));
    }

    /// Session `n1-00aa` of `video` on node `n1`, and a 16:9 rendition `name` of `height`
    /// pixels at `bandwidth` bit/s.
    fn ids_and_tag(
        video: &str,
        name: &str,
        height: u32,
        bandwidth: u64,
    ) -> (Arc<SessionIds>, Arc<RenditionTag>) {
        let ids = Arc::new(SessionIds::new(video.into(), "n1-00aa".into(), "n1".into()));
        let tag = Arc::new(RenditionTag {
            name: name.into(),
            width: height * 16 / 9,
            height,
            bandwidth,
        });
        (ids, tag)
    }

    /// A [`SegmentRecord`] (what a request queues without allocating) reaches both logs as
    /// the record [`SegmentRecord::into_record`] makes of it, in queue order with full records.
    #[tokio::test]
    async fn a_segment_record_is_written_as_the_full_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        let (ids, tag) = ids_and_tag("v", "240p", 240, 400_000);
        let mut seg = SegmentRecord::new(PlaybackEvent::Serve, &ids, &tag, 3);
        seg.cache = Some(CacheOutcome::Hit);
        seg.result = Some("ok");
        seg.bytes = Some(200_000);
        seg.duration_ms = Some(1);
        let mut full = PlaybackRecord::new(PlaybackEvent::PrefetchStart, "v", "n1-00aa", "n1");
        full.segment = Some(4);
        log.record_segment(seg.clone());
        log.record(full.clone());
        log.flush().await;
        let a = read_jsonl(dir.path(), "n1-00aa").unwrap();
        assert_eq!(a, read_sqlite(dir.path(), "n1-00aa").unwrap());
        assert_eq!(a.len(), 2, "{a:#?}");
        let mut want = PlaybackRecord::new(PlaybackEvent::Serve, "v", "n1-00aa", "n1");
        want.ts_ms = seg.ts_ms;
        want.ts = a[0].ts.clone();
        want.rendition = Some((*tag).clone());
        want.segment = Some(3);
        want.cache = Some(CacheOutcome::Hit);
        want.result = Some("ok".into());
        want.bytes = Some(200_000);
        want.duration_ms = Some(1);
        assert_eq!(a[0], want);
        assert!(!a[0].ts.is_empty());
        assert_eq!((a[1].event, a[1].segment), (full.event, full.segment));
    }

    /// The writer's borrowed [`Row`] is the record's own JSON, field for field, whichever way
    /// it was queued and whichever optional fields it has.
    #[test]
    fn a_row_serialises_exactly_as_its_record() {
        let (ids, tag) = ids_and_tag("v\"1", "720p", 720, 2_000_000);
        let mut seg = SegmentRecord::new(PlaybackEvent::PrefetchResult, &ids, &tag, 9);
        seg.cache = Some(CacheOutcome::Miss);
        seg.result = Some("fetched");
        seg.bytes = Some(1);
        seg.duration_ms = Some(2);
        let ts = crate::model::rfc3339_ms(seg.ts_ms);
        let mut full = seg.clone().into_record();
        full.ts = ts.clone();
        let queued = Queued::Segment(seg);
        assert_eq!(
            serde_json::to_string(&queued.row(&ts)).unwrap(),
            serde_json::to_string(&full).unwrap()
        );
        full.detail = Some("why".into());
        let bare = PlaybackRecord::new(PlaybackEvent::SessionEnd, "v", "n1-00aa", "n1");
        for r in [full, bare] {
            let json = serde_json::to_string(&r).unwrap();
            let queued = Queued::Full(Box::new(r.clone()));
            let want = if r.ts.is_empty() {
                json.replacen("\"ts\":\"\"", "\"ts\":\"T\"", 1)
            } else {
                json
            };
            assert_eq!(serde_json::to_string(&queued.row("T")).unwrap(), want);
        }
    }

    /// A segment record's JSON line, made from the session's and the rendition's JSON written
    /// once, is byte for byte what serde_json writes for its row: with strings that need
    /// escaping (quotes, backslashes, control characters) and ones that do not (non-ASCII
    /// included), and with each optional field there or not.
    #[test]
    fn a_segment_line_is_what_serde_json_writes_for_its_row() {
        let mut renditions = RenditionJson::default();
        let texts = ["v1", "a\"b\\c", "tab\there\u{1}", "caf\u{e9} \u{1f600}", ""];
        for (k, text) in texts.into_iter().enumerate() {
            let ids = Arc::new(SessionIds::new(
                format!("{text}-video"),
                format!("n1-{text}"),
                text.to_string(),
            ));
            let tag = Arc::new(RenditionTag {
                name: text.to_string(),
                width: 1280,
                height: 720,
                bandwidth: u64::MAX,
            });
            for mask in 0..16u8 {
                let mut r = SegmentRecord::new(PlaybackEvent::PrefetchResult, &ids, &tag, k * 97);
                r.ts_ms = -(k as i64) * 1_000_000_007 + 1_733_000_000_123;
                r.cache = (mask & 1 != 0).then_some(CacheOutcome::Hit);
                r.result = (mask & 2 != 0).then_some(["ok", "fetched", "we\"ird"][k % 3]);
                r.bytes = (mask & 4 != 0).then_some(u64::MAX - k as u64);
                r.duration_ms = (mask & 8 != 0).then_some(k as u64);
                let ts = crate::model::rfc3339_ms(r.ts_ms);
                let want = serde_json::to_string(&Queued::Segment(r.clone()).row(&ts)).unwrap();
                let mut got = Vec::new();
                segment_line(&mut got, &r, &ts, renditions.json(&tag));
                assert_eq!(String::from_utf8(got).unwrap(), want, "mask {mask}");
            }
        }
    }

    /// The rendition JSON the writer keeps is bounded, and a tag it has let go of is written
    /// afresh, not from the JSON of another tag that took its address.
    #[test]
    fn the_rendition_json_kept_is_bounded_and_belongs_to_its_tag() {
        let mut renditions = RenditionJson::default();
        let tag = |n: usize| {
            Arc::new(RenditionTag {
                name: format!("r{n}"),
                width: 16,
                height: 9,
                bandwidth: n as u64,
            })
        };
        for n in 0..3 * MAX_RENDITION_JSON {
            let t = tag(n);
            let json = renditions.json(&t).to_string();
            assert_eq!(json, serde_json::to_string(&*t).unwrap());
            assert!(renditions.by_tag.len() <= MAX_RENDITION_JSON);
        }
    }

    /// The one number a `SELECT count(*) ...` answers.
    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn tagged(event: PlaybackEvent, session: &str, k: usize) -> PlaybackRecord {
        let mut r = PlaybackRecord::new(event, "v", session, "n1");
        r.segment = Some(k);
        r
    }

    #[test]
    fn spans_merge_when_they_touch_or_overlap_and_an_open_end_reads_to_the_last_row() {
        assert_eq!(merge_spans(vec![]), vec![]);
        assert_eq!(
            merge_spans(vec![
                (10, Some(20)),
                (1, Some(4)),
                (5, Some(7)),
                (30, None),
                (35, Some(40))
            ]),
            vec![(1, 7), (10, 20), (30, i64::MAX)]
        );
    }

    /// Issue 11 (P3): with thousands of sessions interleaving, a per-record index by session id
    /// cost a random page for every record. Records now go in append order with no index, and a
    /// session is still read back whole and alone from its spans: across its end, a record
    /// after its end, and a restart of the writer.
    #[tokio::test]
    async fn a_session_reads_back_whole_from_its_spans_across_an_end_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("n1-00aa", "n1-00bb");
        {
            let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
            for k in 0..20 {
                log.record(tagged(PlaybackEvent::Serve, a, k));
                log.record(tagged(PlaybackEvent::Serve, b, k));
            }
            log.record(tagged(PlaybackEvent::SessionEnd, a, 0));
            log.flush().await;
            for k in 20..25 {
                log.record(tagged(PlaybackEvent::Serve, b, k));
            }
            // A read-ahead that finishes after its session ended.
            log.record(tagged(PlaybackEvent::PrefetchResult, a, 20));
            log.flush().await;
        }
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        let open_spans: i64 = count(
            &conn,
            "SELECT count(*) FROM playback_sessions WHERE last_seq IS NULL",
        );
        assert_eq!(open_spans, 0, "the last run's spans end where its rows do");
        for k in 25..30 {
            log.record(tagged(PlaybackEvent::Serve, b, k));
            log.record(tagged(PlaybackEvent::Serve, a, k));
        }
        log.flush().await;
        for (session, want) in [(a, 27), (b, 30)] {
            let rows = read_sqlite(dir.path(), session).unwrap();
            assert_eq!(rows.len(), want, "{session}");
            assert_eq!(rows, read_jsonl(dir.path(), session).unwrap(), "{session}");
        }
        let indexes: i64 = count(
            &conn,
            "SELECT count(*) FROM pragma_index_list('playback_events')",
        );
        assert_eq!(indexes, 0, "an index on the records costs every insert");
    }

    /// A node's database from before the spans (an index by session id instead) still reads
    /// back every session once opened, and loses its index.
    #[tokio::test]
    async fn a_database_with_the_old_session_index_is_migrated_to_spans() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(SQLITE_NAME);
        {
            let conn = Connection::open(&db).unwrap();
            let table = &SCHEMA[..SCHEMA.find("-- Where each").unwrap()];
            conn.execute_batch(table).unwrap();
            conn.execute_batch(
                "CREATE INDEX playback_session ON playback_events(session_id, seq);",
            )
            .unwrap();
            for (i, s) in ["old-a", "old-b", "old-a"].iter().enumerate() {
                conn.execute(
                    "INSERT INTO playback_events (ts_ms, ts, event, video_id, session_id, node_id)
                     VALUES (?1, '', 'SERVE', 'v', ?2, 'n1')",
                    params![i as i64, s],
                )
                .unwrap();
            }
        }
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        log.record(tagged(PlaybackEvent::Serve, "old-a", 9));
        log.flush().await;
        let rows = read_sqlite(dir.path(), "old-a").unwrap();
        assert_eq!(
            rows.iter().map(|r| r.ts_ms).take(2).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(read_sqlite(dir.path(), "old-b").unwrap().len(), 1);
        let conn = Connection::open(&db).unwrap();
        let left: i64 = count(
            &conn,
            "SELECT count(*) FROM sqlite_master WHERE name = 'playback_session'",
        );
        assert_eq!(left, 0);
    }

    /// The JSON-lines file is rotated by size and only `files` rotated files are kept: the
    /// disk the log takes is bounded, and what is left reads back as the newest records, in
    /// order.
    #[tokio::test]
    async fn the_json_lines_file_rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_rows: 1_000_000,
            file_bytes: 4_000,
            files: 2,
        };
        let log = PlaybackLog::open(dir.path(), retention).unwrap();
        let mut written = 0;
        for _ in 0..40 {
            for _ in 0..10 {
                log.record(tagged(PlaybackEvent::Serve, "n1-00aa", written));
                written += 1;
            }
            log.flush().await;
        }
        let current = dir.path().join(JSONL_NAME);
        assert!(rotated_path(&current, 1).exists());
        assert!(rotated_path(&current, 2).exists());
        assert!(
            !rotated_path(&current, 3).exists(),
            "more files kept than asked"
        );
        let segments: Vec<usize> = read_jsonl(dir.path(), "n1-00aa")
            .unwrap()
            .iter()
            .map(|r| r.segment.unwrap())
            .collect();
        assert!(
            segments.len() < written / 2,
            "{} of {written} kept",
            segments.len()
        );
        let first = segments[0];
        assert_eq!(
            segments,
            (first..written).collect::<Vec<_>>(),
            "the newest, in order"
        );
        for k in [1, 2] {
            let len = std::fs::metadata(rotated_path(&current, k)).unwrap().len();
            // A batch is never split: a file ends at the first batch that reaches the size.
            assert!(
                (4_000..4_000 + 10 * 300).contains(&len),
                "file .{k}: {len} bytes"
            );
        }
    }

    /// The SQLite table keeps about `max_rows`: the oldest rows go, with the spans of sessions
    /// that ended before what is left; the newest rows stay and read back.
    #[tokio::test]
    async fn the_table_keeps_the_newest_rows_and_drops_old_sessions_spans() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_rows: 160,
            ..Retention::default()
        };
        let log = PlaybackLog::open(dir.path(), retention).unwrap();
        log.record(tagged(PlaybackEvent::Serve, "n1-00aa", 0));
        log.record(tagged(PlaybackEvent::SessionEnd, "n1-00aa", 0));
        for k in 0..1_000 {
            log.record(tagged(PlaybackEvent::Serve, "n1-00bb", k));
            if k % 50 == 49 {
                log.flush().await;
            }
        }
        log.flush().await;
        let kept: Vec<usize> = read_sqlite(dir.path(), "n1-00bb")
            .unwrap()
            .iter()
            .map(|r| r.segment.unwrap())
            .collect();
        // Trimmed to 160 once over 170 (a sixteenth more), after batches of 50.
        assert!(
            (160..=170 + 50).contains(&kept.len()),
            "{} rows kept",
            kept.len()
        );
        assert_eq!(kept, (1_000 - kept.len()..1_000).collect::<Vec<_>>());
        assert!(read_sqlite(dir.path(), "n1-00aa").unwrap().is_empty());
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        let spans: i64 = count(
            &conn,
            "SELECT count(*) FROM playback_sessions WHERE session_id = 'n1-00aa'",
        );
        assert_eq!(spans, 0, "the ended session's span outlived its rows");
    }

    /// What the writer runs for every batch must not read the whole table: at the row bound
    /// (millions of rows) a scan costs milliseconds per batch. SQLite's plan says how it reads.
    #[test]
    fn the_writers_per_batch_statements_never_scan_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        for sql in [TRIM_ENDS, TRIM_ROWS, INSERT] {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let n = st.parameter_count();
            let plan: Vec<String> = st
                .query_map(rusqlite::params_from_iter(vec![1i64; n]), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                !plan
                    .iter()
                    .any(|step| step.starts_with("SCAN playback_events")),
                "{sql}: {plan:?}"
            );
        }
        // The check can fail: both ends in one SELECT scan.
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT min(seq), max(seq) FROM playback_events",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.starts_with("SCAN playback_events"), "{plan}");
    }
}
