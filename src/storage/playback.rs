//! The playback log (issue 4, seed rules 8 and 9, seed section "Logging Requirements"): one
//! record per `SERVE`, `PREFETCH_START` and `PREFETCH_RESULT` (plus session lifecycle records),
//! written twice on the node that served it:
//!
//! - as JSON lines, one object per line, in `{data_dir}/playback.jsonl` (easy to `grep`/`jq`);
//! - as rows of the `playback_rows` table of the node's SQLite file (`reel.sqlite`), in append
//!   order, about 30 bytes each: the session's ids and the rendition are numbers into
//!   `playback_ids` and `playback_renditions`, the event and cache outcome codes. The view
//!   `playback_events` shows them with their texts. `playback_sessions` holds where each
//!   session's rows lie (its spans of row numbers), so that one session is read without
//!   reading the table and a record costs no index insert.
//!
//! Writes never block an async task: [`PlaybackLog::record`] sends the record over a channel to
//! one dedicated writer thread, which lets records gather for [`LINGER`] after the first, then
//! drains whatever is queued and writes it as one batch (one SQLite transaction, one file
//! write). [`PlaybackLog::flush`] is a barrier: it completes once every record sent before it
//! is on disk, without waiting for the linger (a node's graceful stop ends with one; tests use
//! it instead of sleeping).

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

    /// Every event, in the order of their [`PlaybackEvent::code`]s.
    pub const ALL: [Self; 6] = [
        Self::Serve,
        Self::PrefetchStart,
        Self::PrefetchResult,
        Self::SessionStart,
        Self::SessionReassigned,
        Self::SessionEnd,
    ];

    /// The number that stands for the event in the `event` column of the SQLite table
    /// `playback_rows`: 1 to 6, in the order of [`PlaybackEvent::ALL`]. The view
    /// `playback_events` turns it back into [`PlaybackEvent::as_str`].
    pub fn code(self) -> i64 {
        match self {
            Self::Serve => 1,
            Self::PrefetchStart => 2,
            Self::PrefetchResult => 3,
            Self::SessionStart => 4,
            Self::SessionReassigned => 5,
            Self::SessionEnd => 6,
        }
    }

    /// The event whose [`PlaybackEvent::code`] is `code`, if any.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
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

    /// The number that stands for it in the `cache` column of `playback_rows`: 1 for a hit,
    /// 0 for a miss.
    pub fn code(self) -> i64 {
        match self {
            Self::Hit => 1,
            Self::Miss => 0,
        }
    }

    /// The outcome whose [`CacheOutcome::code`] is `code`, if any.
    pub fn from_code(code: i64) -> Option<Self> {
        [Self::Hit, Self::Miss]
            .into_iter()
            .find(|c| c.code() == code)
    }
}

/// The rendition a record concerns, as the multivariant playlist describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Append `s`, a text that needs no escaping (a fixed text of the log: a test holds each
/// equal to serde_json's), as a JSON string, without [`json_str`]'s scan for what would.
fn plain_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
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
/// as the node serves, by about 1 kB per segment request: three records, each a JSON line of
/// about 310 bytes and a SQLite row of about 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows of `playback_rows` kept at most; the oldest are deleted first.
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
    /// The writer thread and its flag "a flush is waiting": a flush sets it and unparks the
    /// thread, which then ends its [`LINGER`] at once.
    writer: Arc<Wake>,
}

/// How a flush cuts the writer's [`LINGER`] short.
struct Wake {
    thread: std::sync::OnceLock<std::thread::Thread>,
    flush: std::sync::atomic::AtomicBool,
}

impl Wake {
    /// No thread yet (set once the writer is spawned), no flush asked.
    fn new() -> Self {
        Self {
            thread: std::sync::OnceLock::new(),
            flush: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Let a batch gather for `linger`, or until a flush asks for it ([`PlaybackLog::flush`]).
    /// Senders of records do not wake the thread: they only queue.
    fn linger(&self, linger: std::time::Duration) {
        let deadline = std::time::Instant::now() + linger;
        while !self.flush.swap(false, Ordering::AcqRel) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::park_timeout(left);
        }
    }

    /// Ask the writer to write what it holds now (after queueing a `Cmd::Flush`).
    fn flush(&self) {
        self.flush.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

impl std::fmt::Debug for PlaybackLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackLog")
            .field("jsonl", &self.jsonl)
            .finish()
    }
}

const SCHEMA: &str = "
-- One row per record, in append order. The session's ids and the rendition are numbers into
-- playback_ids and playback_renditions, the event and the cache outcome are codes, and the
-- RFC 3339 time is made from ts_ms when read: a SERVE row is about 30 bytes, not 200. Binding
-- and writing the wide row was two fifths of the writer's CPU (issue 11, P1).
CREATE TABLE IF NOT EXISTS playback_rows (
    seq         INTEGER PRIMARY KEY, -- the rowid; only the oldest rows are deleted (trim keeps
                                     -- the newest), so it only grows and has no gaps
    ts_ms       INTEGER NOT NULL,
    event       INTEGER NOT NULL,    -- PlaybackEvent::code: 1 SERVE, 2 PREFETCH_START,
                                     -- 3 PREFETCH_RESULT, 4 SESSION_START,
                                     -- 5 SESSION_REASSIGNED, 6 SESSION_END
    ids         INTEGER NOT NULL,    -- playback_ids.id
    rendition   INTEGER,             -- playback_renditions.id
    segment     INTEGER,
    cache       INTEGER,             -- 1 hit, 0 miss
    result      TEXT,
    bytes       INTEGER,
    duration_ms INTEGER,
    detail      TEXT
);
-- The video, session and node of records: one row for each session (for each video and node
-- its records name), deleted with the session's last span.
CREATE TABLE IF NOT EXISTS playback_ids (
    id          INTEGER PRIMARY KEY,
    video_id    TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    UNIQUE (session_id, video_id, node_id)
);
-- The renditions records name: one row for each rendition this node has logged (a few for each
-- video played), kept.
CREATE TABLE IF NOT EXISTS playback_renditions (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    bandwidth   INTEGER NOT NULL,
    UNIQUE (name, width, height, bandwidth)
);
-- Where each session's records lie in playback_rows: rows first_seq..=last_seq hold every
-- record of the session written in that span (last_seq NULL: to the end of the table). One
-- row per span; a session has several when it ended and came back, or the node restarted.
CREATE TABLE IF NOT EXISTS playback_sessions (
    session_id  TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER,
    PRIMARY KEY (session_id, first_seq)
);
-- The records with their texts, in the columns the table playback_events had before
-- playback_rows: what a person reading the log by hand queries.
CREATE VIEW IF NOT EXISTS playback_events AS
SELECT r.seq, r.ts_ms,
    strftime('%Y-%m-%dT%H:%M:%fZ', max(r.ts_ms, 0) / 1000.0, 'unixepoch') AS ts,
    CASE r.event WHEN 1 THEN 'SERVE' WHEN 2 THEN 'PREFETCH_START' WHEN 3 THEN 'PREFETCH_RESULT'
        WHEN 4 THEN 'SESSION_START' WHEN 5 THEN 'SESSION_REASSIGNED' WHEN 6 THEN 'SESSION_END'
    END AS event,
    i.video_id, i.session_id, i.node_id,
    n.name AS rendition, n.width, n.height, n.bandwidth,
    r.segment, CASE r.cache WHEN 1 THEN 'hit' WHEN 0 THEN 'miss' END AS cache,
    r.result, r.bytes, r.duration_ms, r.detail
FROM playback_rows r JOIN playback_ids i ON i.id = r.ids
LEFT JOIN playback_renditions n ON n.id = r.rendition;
";

/// Databases written before `playback_rows` kept every record whole in a table named
/// `playback_events`, renamed `playback_events_wide` before this runs (inside the
/// migration's transaction, after [`SCHEMA`]): its rows move to `playback_rows` with their
/// row numbers, so its spans still hold.
const MIGRATE_WIDE_ROWS: &str = "
INSERT OR IGNORE INTO playback_ids (video_id, session_id, node_id)
    SELECT DISTINCT video_id, session_id, node_id FROM playback_events_wide;
INSERT OR IGNORE INTO playback_renditions (name, width, height, bandwidth)
    SELECT DISTINCT rendition, coalesce(width, 0), coalesce(height, 0), coalesce(bandwidth, 0)
    FROM playback_events_wide WHERE rendition IS NOT NULL;
INSERT INTO playback_rows (seq, ts_ms, event, ids, rendition, segment, cache, result, bytes,
        duration_ms, detail)
    SELECT e.seq, e.ts_ms,
        CASE e.event WHEN 'SERVE' THEN 1 WHEN 'PREFETCH_START' THEN 2 WHEN 'PREFETCH_RESULT' THEN 3
            WHEN 'SESSION_START' THEN 4 WHEN 'SESSION_REASSIGNED' THEN 5 WHEN 'SESSION_END' THEN 6
            ELSE 0 END,
        i.id, n.id, e.segment, CASE e.cache WHEN 'hit' THEN 1 WHEN 'miss' THEN 0 END,
        e.result, e.bytes, e.duration_ms, e.detail
    FROM playback_events_wide e
    JOIN playback_ids i
        ON i.session_id = e.session_id AND i.video_id = e.video_id AND i.node_id = e.node_id
    LEFT JOIN playback_renditions n
        ON n.name = e.rendition AND n.width = coalesce(e.width, 0)
        AND n.height = coalesce(e.height, 0) AND n.bandwidth = coalesce(e.bandwidth, 0);
DROP TABLE playback_events_wide;
";

/// Databases written before the spans table had an index on `(session_id, seq)` of the wide
/// table instead: turn it into one closed span per session (runs before
/// [`MIGRATE_WIDE_ROWS`], which drops the index with the table).
const MIGRATE_SESSION_INDEX: &str = "
INSERT OR IGNORE INTO playback_sessions (session_id, first_seq, last_seq)
    SELECT session_id, min(seq), max(seq) FROM playback_events_wide GROUP BY session_id;
";

fn open_db(path: &Path) -> Result<Connection, rusqlite::Error> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // The writer's statements (up to seven `INSERT`s of rows, the lookups of ids and
    // renditions, the spans', the trim's) stay prepared; rusqlite keeps 16 by default.
    conn.set_prepared_statement_cache_capacity(32);
    migrate_wide_table(&mut conn)?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// If the database still has the wide table of records (`playback_events` as a table, not
/// the view), move its records to `playback_rows` and drop it, in one transaction. Decided
/// inside that transaction, so two processes opening the file at once migrate it once.
fn migrate_wide_table(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let exists = |conn: &Connection, kind: &str, name: &str| -> Result<bool, rusqlite::Error> {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = ?1 AND name = ?2",
            [kind, name],
            |r| r.get(0),
        )
    };
    if !exists(conn, "table", "playback_events")? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if exists(&tx, "table", "playback_events")? {
        let started = std::time::Instant::now();
        let rows: i64 = tx.query_row("SELECT count(*) FROM playback_events", [], |r| r.get(0))?;
        tracing::info!(
            rows,
            "moving the playback log's rows to the narrow table playback_rows"
        );
        let old_index = exists(&tx, "index", "playback_session")?;
        tx.execute_batch("ALTER TABLE playback_events RENAME TO playback_events_wide;")?;
        tx.execute_batch(SCHEMA)?;
        if old_index {
            tx.execute_batch(MIGRATE_SESSION_INDEX)?;
        }
        tx.execute_batch(MIGRATE_WIDE_ROWS)?;
        tx.commit()?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            rows,
            seconds,
            "moved the playback log's rows to playback_rows"
        );
        return Ok(());
    }
    tx.commit()
}

/// The columns of `playback_rows` the writer sets: all but `seq`, which SQLite chooses (one
/// more than the table's largest, <https://www.sqlite.org/autoinc.html>); binding it instead
/// cost a search of the table for each row.
const INSERT_HEAD: &str = "INSERT INTO playback_rows (ts_ms, event, ids, rendition, segment, \
    cache, result, bytes, duration_ms, detail) VALUES ";

/// Values of one row: [`INSERT_HEAD`]'s columns.
const COLUMNS: usize = 10;

/// Rows one `INSERT` writes at most: 640 bound values, within SQLite's limit of 32,766
/// (`SQLITE_MAX_VARIABLE_NUMBER`, <https://www.sqlite.org/limits.html>, item 9).
const ROWS_PER_INSERT: usize = 64;

/// The `INSERT` of `2^k` rows, for `k` from 0 (one row) to `log2(ROWS_PER_INSERT)`:
/// a batch of `n` rows is written by the statements of `n`'s binary digits, so at most seven
/// different statements are ever prepared, and a batch of hundreds runs a handful instead of
/// one for each row. Stepping a prepared `INSERT` (start, halt, reset, the cursor opened and
/// the table's last row looked up again) took about a third of a row's cost in SQLite
/// (issue 11, P1, counted with `scripts/bench-instructions`).
static INSERTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    (0..=ROWS_PER_INSERT.ilog2())
        .map(|k| format!("{INSERT_HEAD}{}", vec![row.as_str(); 1 << k].join(", ")))
        .collect()
});

/// The one-row `INSERT` (what the plan test checks).
#[cfg(test)]
fn insert_one() -> &'static str {
    &INSERTS[0]
}

/// What a record's row takes besides its [`Row`]: the rows the writer looked up for it.
struct RowKeys {
    ids: i64,
    rendition: Option<i64>,
}

/// Insert the rows of `rows` (each a record and its keys), in order, as [`INSERTS`] says, as
/// seqs `first_seq..`.
///
/// Errors: SQLite's; and if SQLite chose other seqs than these (the spans written before the
/// rows point at them), an error that rolls the batch back.
fn insert_rows<'a>(
    tx: &rusqlite::Transaction<'_>,
    first_seq: i64,
    rows: impl ExactSizeIterator<Item = (Row<'a>, &'a RowKeys)>,
) -> Result<(), rusqlite::Error> {
    let mut left = rows.len();
    let mut rows = rows;
    let mut last_seq = first_seq - 1;
    while left > 0 {
        // The largest power of two of rows that fits, up to ROWS_PER_INSERT.
        let k = left.min(ROWS_PER_INSERT).ilog2() as usize;
        let n = 1 << k;
        let mut stmt = tx.prepare_cached(&INSERTS[k])?;
        for (i, (r, keys)) in rows.by_ref().take(n).enumerate() {
            bind_row(&mut stmt, i * COLUMNS, &r, keys)?;
        }
        stmt.raw_execute()?;
        left -= n;
        last_seq += n as i64;
        if tx.last_insert_rowid() != last_seq {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                Some(format!(
                    "playback rows were given seqs up to {}, not {last_seq}",
                    tx.last_insert_rowid()
                )),
            ));
        }
    }
    Ok(())
}

/// Bind record `r` with `keys` to the values after the first `at` of `stmt`.
fn bind_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    r: &Row<'_>,
    keys: &RowKeys,
) -> Result<(), rusqlite::Error> {
    stmt.raw_bind_parameter(at + 1, r.ts_ms)?;
    stmt.raw_bind_parameter(at + 2, r.event.code())?;
    stmt.raw_bind_parameter(at + 3, keys.ids)?;
    stmt.raw_bind_parameter(at + 4, keys.rendition)?;
    stmt.raw_bind_parameter(at + 5, r.segment.map(|s| s as i64))?;
    stmt.raw_bind_parameter(at + 6, r.cache.map(CacheOutcome::code))?;
    stmt.raw_bind_parameter(at + 7, r.result)?;
    stmt.raw_bind_parameter(at + 8, r.bytes.map(|b| b as i64))?;
    stmt.raw_bind_parameter(at + 9, r.duration_ms.map(|b| b as i64))?;
    stmt.raw_bind_parameter(at + 10, r.detail)
}

/// The `playback_ids` row of a video, session and node, added if there is none.
fn ids_row(
    tx: &rusqlite::Transaction<'_>,
    video_id: &str,
    session_id: &str,
    node_id: &str,
) -> Result<i64, rusqlite::Error> {
    let ids = params![video_id, session_id, node_id];
    tx.prepare_cached(
        "INSERT OR IGNORE INTO playback_ids (video_id, session_id, node_id) VALUES (?1, ?2, ?3)",
    )?
    .execute(ids)?;
    tx.prepare_cached(
        "SELECT id FROM playback_ids WHERE session_id = ?2 AND video_id = ?1 AND node_id = ?3",
    )?
    .query_row(ids, |row| row.get(0))
}

/// The `playback_renditions` row of `tag`, added if there is none.
fn rendition_row(
    tx: &rusqlite::Transaction<'_>,
    tag: &RenditionTag,
) -> Result<i64, rusqlite::Error> {
    let values = params![tag.name, tag.width, tag.height, tag.bandwidth as i64];
    tx.prepare_cached(
        "INSERT OR IGNORE INTO playback_renditions (name, width, height, bandwidth)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(values)?;
    tx.prepare_cached(
        "SELECT id FROM playback_renditions
         WHERE name = ?1 AND width = ?2 AND height = ?3 AND bandwidth = ?4",
    )?
    .query_row(values, |row| row.get(0))
}

/// The sessions whose span in `playback_sessions` this writer has opened and not yet closed,
/// with the span's `first_seq` and the session's `playback_ids` row. Bounded by the sessions
/// that log without ending: past [`MAX_OPEN_SPANS`] it is emptied, which only opens new spans
/// (a span without an end reads to the end of the table, so none is lost). An open span keeps
/// its session's `playback_ids` row from [`trim`], so the row kept here stays valid.
#[derive(Default)]
struct Spans {
    /// Hashed with foldhash: looked up for every record (session ids are the node's own).
    open: std::collections::HashMap<String, OpenSpan, foldhash::fast::RandomState>,
}

/// A span [`Spans`] has open.
struct OpenSpan {
    first_seq: i64,
    /// The `playback_ids` row of the span's first record.
    ids: i64,
    video_id: Box<str>,
    node_id: Box<str>,
}

/// Open spans a writer remembers at most (a node's sessions are bounded by
/// `streaming.max_sessions`, 50,000 by default).
const MAX_OPEN_SPANS: usize = 200_000;

impl Spans {
    /// Write record `r` (`insert` makes its row from its `playback_ids` row and answers the
    /// row's `seq`), opening the session's span on its first record and closing it on
    /// `SESSION_END`. Runs inside the batch's transaction.
    fn write(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        r: &Row<'_>,
        insert: impl FnOnce(i64) -> Result<i64, rusqlite::Error>,
    ) -> Result<(), rusqlite::Error> {
        let open = self.open.get(r.session_id).map(|o| {
            let same = *o.video_id == *r.video_id && *o.node_id == *r.node_id;
            (o.first_seq, same.then_some(o.ids))
        });
        let ids = match open {
            Some((_, Some(ids))) => ids,
            _ => ids_row(tx, r.video_id, r.session_id, r.node_id)?,
        };
        let seq = insert(ids)?;
        let first = match open {
            Some((first, _)) => first,
            None => {
                if self.open.len() >= MAX_OPEN_SPANS {
                    self.open.clear();
                }
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO playback_sessions (session_id, first_seq) VALUES (?1, ?2)",
                )?
                .execute(params![r.session_id, seq])?;
                let span = OpenSpan {
                    first_seq: seq,
                    ids,
                    video_id: r.video_id.into(),
                    node_id: r.node_id.into(),
                };
                self.open.insert(r.session_id.to_string(), span);
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
    /// The time of the last whole second written, up to its `.` (`2026-12-06T00:06:12.`),
    /// and that second (Unix time): a batch's records share a few seconds, and formatting
    /// each record's date and time afresh was 3 % of the writer's CPU (issue 11, P1).
    second: Option<(i64, String)>,
}

impl Times {
    fn fill(&mut self, batch: &[Queued]) {
        self.text.clear();
        self.ends.clear();
        for q in batch {
            self.push(q.ts_ms());
            self.ends.push(self.text.len());
        }
    }

    /// Append the time `ms` (milliseconds since the Unix epoch) as [`write_rfc3339_ms`]
    /// writes it (a test holds them equal).
    fn push(&mut self, ms: i64) {
        let ms = ms.max(0);
        let (second, milli) = (ms / 1000, ms % 1000);
        let prefix = match &mut self.second {
            Some((s, prefix)) if *s == second => prefix,
            kept => {
                let mut prefix = String::new();
                write_rfc3339_ms(&mut prefix, second * 1000);
                // `.000Z` ends it: keep the `.`.
                prefix.truncate(prefix.len() - "000Z".len());
                &mut kept.insert((second, prefix)).1
            }
        };
        self.text.push_str(prefix);
        for digit in [milli / 100, milli / 10 % 10, milli % 10] {
            self.text.push(char::from(b'0' + digit as u8));
        }
        self.text.push('Z');
    }

    /// The time of the batch's `i`th record.
    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// What the writer keeps from batch to batch besides its connection and file.
#[derive(Default)]
struct BatchState {
    spans: Spans,
    renditions: Renditions,
    times: Times,
    /// Each record's keys in the batch being written (the vector kept for its capacity).
    keys: Vec<RowKeys>,
}

/// Write `batch` to the JSON-lines `file` and, in one transaction, to `conn`'s tables. A
/// failure of either is logged; a failed transaction leaves none of the batch in SQLite.
fn write_batch(
    conn: &mut Connection,
    file: &mut JsonLines,
    state: &mut BatchState,
    batch: &[Queued],
) {
    let BatchState {
        spans,
        renditions,
        times,
        keys,
    } = state;
    times.fill(batch);
    if let Err(e) = file.append(batch, times, renditions) {
        tracing::error!("playback log file write failed: {e}");
    }
    // Rows are appended in rowid order and nothing indexes them by session: an index keyed by
    // session id took a random page for every record once thousands of sessions interleave
    // (about 50 us of the writer's CPU per request at 12,000 sessions, issue 11 P3). Each
    // session's span is written once when it opens and once when it ends instead.
    let res = conn.transaction().and_then(|tx| {
        // The rows take the seqs after the newest (the writer is the table's only writer),
        // so the spans are written before the rows they point at, and the rows go in
        // together.
        let newest: Option<i64> = tx
            .prepare_cached("SELECT max(seq) FROM playback_rows")?
            .query_row([], |r| r.get(0))?;
        let first_seq = newest.unwrap_or(0) + 1;
        keys.clear();
        for (i, q) in batch.iter().enumerate() {
            let r = q.row(times.get(i));
            let rendition = match q {
                Queued::Segment(s) => Some(renditions.row(&tx, &s.rendition)?),
                Queued::Full(f) => match &f.rendition {
                    Some(tag) => Some(renditions.row_of_value(&tx, tag)?),
                    None => None,
                },
            };
            let seq = first_seq + i as i64;
            spans.write(&tx, &r, |ids| {
                keys.push(RowKeys { ids, rendition });
                Ok(seq)
            })?;
        }
        let rows = batch.iter().enumerate().map(|(i, q)| q.row(times.get(i)));
        insert_rows(&tx, first_seq, rows.zip(keys.iter()))?;
        tx.commit()
    });
    if let Err(e) = res {
        // The spans and rows added in the lost transaction are gone with it: start again from
        // none (spans already written and never closed still read to the end of the table).
        spans.open.clear();
        renditions.forget_rows();
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
}

/// What the writer keeps of the renditions that segment records named lately, keyed by the
/// address of their shared tag: each one's JSON, and its `playback_renditions` row once
/// looked up. Each entry holds its tag, so no other tag can take that address while the entry
/// is there. At most [`MAX_RENDITIONS_KEPT`] entries: past that it is emptied.
#[derive(Default)]
struct Renditions {
    /// Hashed with foldhash: looked up for every segment record.
    by_tag: std::collections::HashMap<usize, KeptRendition, foldhash::fast::RandomState>,
    /// The `playback_renditions` rows of the renditions full records named (errors, mostly),
    /// by value: they carry their own copy of the tag. Bounded as `by_tag`.
    by_value: std::collections::HashMap<RenditionTag, i64>,
}

/// A rendition [`Renditions`] keeps.
struct KeptRendition {
    tag: Arc<RenditionTag>,
    /// `{"name":…,"width":…,"height":…,"bandwidth":…}`, as serde_json writes the tag.
    json: Box<str>,
    /// Its `playback_renditions` row, once looked up.
    row: Option<i64>,
}

/// Renditions the writer keeps at most (a node serves a few per video).
const MAX_RENDITIONS_KEPT: usize = 1024;

impl Renditions {
    fn kept(&mut self, tag: &Arc<RenditionTag>) -> &mut KeptRendition {
        let key = Arc::as_ptr(tag) as usize;
        if self.by_tag.len() >= MAX_RENDITIONS_KEPT && !self.by_tag.contains_key(&key) {
            self.by_tag.clear();
        }
        self.by_tag.entry(key).or_insert_with(|| KeptRendition {
            tag: tag.clone(),
            // A RenditionTag always serialises (strings and numbers).
            json: serde_json::to_string(&**tag)
                .unwrap_or_default()
                .into_boxed_str(),
            row: None,
        })
    }

    /// `tag` as serde_json writes it.
    fn json(&mut self, tag: &Arc<RenditionTag>) -> &str {
        &self.kept(tag).json
    }

    /// The `playback_renditions` row of `tag`, looked up (or added) once.
    fn row(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        tag: &Arc<RenditionTag>,
    ) -> Result<i64, rusqlite::Error> {
        let kept = self.kept(tag);
        match kept.row {
            Some(row) => Ok(row),
            None => {
                let row = rendition_row(tx, &kept.tag)?;
                kept.row = Some(row);
                Ok(row)
            }
        }
    }

    /// The `playback_renditions` row of a full record's `tag`, looked up (or added) once.
    fn row_of_value(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        tag: &RenditionTag,
    ) -> Result<i64, rusqlite::Error> {
        if let Some(&row) = self.by_value.get(tag) {
            return Ok(row);
        }
        let row = rendition_row(tx, tag)?;
        if self.by_value.len() >= MAX_RENDITIONS_KEPT {
            self.by_value.clear();
        }
        self.by_value.insert(tag.clone(), row);
        Ok(row)
    }

    /// Forget the rows looked up: the transaction that looked them up was rolled back.
    fn forget_rows(&mut self) {
        for kept in self.by_tag.values_mut() {
            kept.row = None;
        }
        self.by_value.clear();
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
    // An RFC 3339 time (digits, `-`, `:`, `T`, `.`, `Z`) and the fixed texts need no
    // escaping: written as they are, not searched for what would (issue 11, P1).
    buf.extend_from_slice(b",\"ts\":\"");
    buf.extend_from_slice(ts.as_bytes());
    buf.extend_from_slice(b"\",\"event\":");
    plain_str(buf, r.event.as_str());
    buf.push(b',');
    buf.extend_from_slice(r.ids.json.as_bytes());
    buf.extend_from_slice(b",\"rendition\":");
    buf.extend_from_slice(rendition.as_bytes());
    buf.extend_from_slice(b",\"segment\":");
    buf.extend_from_slice(n.format(r.segment).as_bytes());
    if let Some(cache) = r.cache {
        buf.extend_from_slice(b",\"cache\":");
        plain_str(buf, cache.as_str());
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
        })
    }

    /// Append one line per record, then rotate if the file has reached its size: a batch is
    /// never split between two files.
    fn append(
        &mut self,
        batch: &[Queued],
        times: &Times,
        renditions: &mut Renditions,
    ) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (i, q) in batch.iter().enumerate() {
            match q {
                Queued::Segment(r) => {
                    let rendition = renditions.json(&r.rendition);
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
    "SELECT (SELECT min(seq) FROM playback_rows), (SELECT max(seq) FROM playback_rows)";
/// The rows before a row number.
const TRIM_ROWS: &str = "DELETE FROM playback_rows WHERE seq < ?1";
/// The spans that end before a row number, answering their sessions.
const TRIM_SPANS: &str = "DELETE FROM playback_sessions WHERE last_seq < ?1 RETURNING session_id";
/// The ids of a session that has no span left.
const TRIM_IDS: &str = "DELETE FROM playback_ids WHERE session_id = ?1
    AND NOT EXISTS (SELECT 1 FROM playback_sessions WHERE session_id = ?1)";

/// Delete the oldest rows of `playback_rows` beyond `max_rows`, the session spans that end
/// before what is left, and the `playback_ids` rows of sessions left with no span. Rows are numbered in append order without gaps, so the count is
/// `newest - oldest + 1` and the cut is a range of row numbers. Waits until the table is a
/// sixteenth over its bound, so that deleting goes by whole pages, not a few rows a batch.
fn trim(conn: &Connection, max_rows: u64) -> Result<(), rusqlite::Error> {
    // Cached: it runs after every batch, and preparing it (two subqueries) was 7 % of the
    // writer's CPU (issue 11, P1).
    let (oldest, newest): (Option<i64>, Option<i64>) = conn
        .prepare_cached(TRIM_ENDS)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
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
    let ended: std::collections::HashSet<String> = tx
        .prepare(TRIM_SPANS)?
        .query_map([cut], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut ids = tx.prepare(TRIM_IDS)?;
    for session in &ended {
        ids.execute([session])?;
    }
    drop(ids);
    tx.commit()
}

/// Most records one batch writes before answering waiting flushes.
const MAX_BATCH: usize = 4096;

/// How long the writer lets records gather after the first of a batch arrives, before it
/// writes them in one transaction. A record reaches the disk within about this long (plus the
/// write); a [`PlaybackLog::flush`] cuts it short. Under load this makes one batch of hundreds
/// of records instead of one small transaction (and one wake-up of this thread) for every
/// few: at 15,000 records a second, the writer's share of the node's CPU fell from about a
/// sixth (issue 11, P1). A batch also costs what does not grow with its records (the file's
/// `write`, SQLite's locks, its commit rewriting the table's last page, the sleep): at 25 ms
/// that was most of the writer's 8 to 9 us a record at 1,700 records a second (2 MB segments
/// at 64 connections), 3 us at 100 ms; at 3,750 (15,000 paced players) 8.6 us, 5.9 at 100 ms.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

fn writer(
    rx: mpsc::Receiver<Cmd>,
    mut conn: Connection,
    mut file: JsonLines,
    retention: Retention,
    shed: Arc<AtomicU64>,
    wake: Arc<Wake>,
) {
    // The shed count the writer has logged so far.
    let mut logged = 0;
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    let mut state = BatchState::default();
    while let Ok(first) = rx.recv() {
        if !matches!(first, Cmd::Flush(_)) {
            // Let the batch gather: the senders queue without waking this thread.
            wake.linger(LINGER);
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
        write_batch(&mut conn, &mut file, &mut state, &batch);
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
            "UPDATE playback_sessions SET last_seq = (SELECT max(seq) FROM playback_rows)
             WHERE last_seq IS NULL",
            [],
        )
        .map_err(err)?;
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shed = Arc::new(AtomicU64::new(0));
        let writer_shed = shed.clone();
        let wake = Arc::new(Wake::new());
        let writer_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name("playback-log".into())
            .spawn(move || writer(rx, conn, file, retention, writer_shed, writer_wake))
            .map_err(|e| format!("cannot start the playback log writer: {e}"))?;
        let _ = wake.thread.set(thread.thread().clone());
        Ok(Self {
            tx,
            jsonl,
            shed,
            writer: wake,
        })
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

    /// Completes once every record queued before this call is written to both logs. The
    /// writer does not wait out its [`LINGER`] for it. A node's graceful stop ends with one,
    /// so that the records of its last moments (each open session's `SESSION_END`) are not
    /// lost with the process.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A full queue makes the send wait for the writer: off the async threads.
        let sender = self.tx.clone();
        let sent = tokio::task::spawn_blocking(move || sender.send(Cmd::Flush(tx)).is_ok())
            .await
            .unwrap_or(false);
        if sent {
            self.writer.flush();
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

/// Read the records of `session_id` from the `playback_rows` table of the node whose data
/// directory is `data_dir`, in append order, each `ts` made from its `ts_ms`. Reads only the
/// rows of the session's spans (`playback_sessions`), never the whole table.
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
    let mut stmt = conn.prepare(READ_SPAN).map_err(err)?;
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

/// The records of session `?1` in rows `?2..=?3`, in order. `CROSS JOIN` keeps
/// `playback_rows` the outer loop, read by its row numbers.
const READ_SPAN: &str = "SELECT r.ts_ms, r.event, i.video_id, i.session_id, i.node_id,
        n.name, n.width, n.height, n.bandwidth, r.segment, r.cache, r.result, r.bytes,
        r.duration_ms, r.detail
    FROM playback_rows r CROSS JOIN playback_ids i ON i.id = r.ids
    LEFT JOIN playback_renditions n ON n.id = r.rendition
    WHERE r.seq BETWEEN ?2 AND ?3 AND i.session_id = ?1 ORDER BY r.seq";

fn row_to_record(r: &rusqlite::Row<'_>) -> Result<PlaybackRecord, rusqlite::Error> {
    let ts_ms: i64 = r.get(0)?;
    let rendition: Option<String> = r.get(5)?;
    Ok(PlaybackRecord {
        ts_ms,
        ts: crate::model::rfc3339_ms(ts_ms),
        event: PlaybackEvent::from_code(r.get(1)?).unwrap_or(PlaybackEvent::Serve),
        video_id: r.get(2)?,
        session_id: r.get(3)?,
        node_id: r.get(4)?,
        rendition: match rendition {
            Some(name) => Some(RenditionTag {
                name,
                width: r.get(6)?,
                height: r.get(7)?,
                bandwidth: r.get::<_, i64>(8)? as u64,
            }),
            None => None,
        },
        segment: r.get::<_, Option<i64>>(9)?.map(|s| s as usize),
        cache: r
            .get::<_, Option<i64>>(10)?
            .and_then(CacheOutcome::from_code),
        result: r.get(11)?,
        bytes: r.get::<_, Option<i64>>(12)?.map(|b| b as u64),
        duration_ms: r.get::<_, Option<i64>>(13)?.map(|b| b as u64),
        detail: r.get(14)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flush_ends_the_writers_linger_at_once() {
        let wake = std::sync::Arc::new(super::Wake::new());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let w = wake.clone();
        let lingering = std::thread::spawn(move || {
            // An hour: only a flush ends it within the test's bound.
            w.linger(std::time::Duration::from_secs(3600));
            done_tx.send(()).unwrap();
        });
        let _ = wake.thread.set(lingering.thread().clone());
        // Before or after the thread parks: the flag is seen either way.
        wake.flush();
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the linger ended once a flush asked");
        lingering.join().unwrap();
        assert!(
            !wake.flush.load(std::sync::atomic::Ordering::Acquire),
            "the flush was taken, not left for the next batch"
        );
    }

    /// A batch's times are written as `write_rfc3339_ms` writes each, whatever their order:
    /// within a second, across seconds, back in time, at the epoch and before it.
    #[test]
    fn times_are_the_rfc3339_of_each_record() {
        let now = 1_796_515_572_123_i64;
        let cases = [
            now,
            now + 1,
            now + 876,
            now + 877,
            now + 5_000,
            now - 123,
            now - 124,
            0,
            999,
            -5,
            now + 86_400_000,
        ];
        let mut times = super::Times::default();
        for ms in cases {
            let before = times.text.len();
            times.push(ms);
            let mut want = String::new();
            super::write_rfc3339_ms(&mut want, ms);
            assert_eq!(&times.text[before..], want, "{ms}");
        }
    }

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
        let mut renditions = Renditions::default();
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
                let event = PlaybackEvent::ALL[(k + mask as usize) % PlaybackEvent::ALL.len()];
                let mut r = SegmentRecord::new(event, &ids, &tag, k * 97);
                r.ts_ms = -(k as i64) * 1_000_000_007 + 1_733_000_000_123;
                let outcome = [CacheOutcome::Hit, CacheOutcome::Miss][k % 2];
                r.cache = (mask & 1 != 0).then_some(outcome);
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

    /// The quoted texts segment lines are made of are serde_json's for each value.
    #[test]
    fn the_fixed_texts_json_is_serde_jsons() {
        let plain = |s: &str| {
            let mut buf = Vec::new();
            plain_str(&mut buf, s);
            String::from_utf8(buf).unwrap()
        };
        for e in PlaybackEvent::ALL {
            assert_eq!(plain(e.as_str()), serde_json::to_string(&e).unwrap());
        }
        for c in [CacheOutcome::Hit, CacheOutcome::Miss] {
            assert_eq!(plain(c.as_str()), serde_json::to_string(&c).unwrap());
        }
    }

    /// The renditions the writer keeps are bounded, and a tag it has let go of is written
    /// afresh, not from the JSON of another tag that took its address.
    #[test]
    fn the_renditions_kept_are_bounded_and_belong_to_their_tag() {
        let mut renditions = Renditions::default();
        let tag = |n: usize| {
            Arc::new(RenditionTag {
                name: format!("r{n}"),
                width: 16,
                height: 9,
                bandwidth: n as u64,
            })
        };
        for n in 0..3 * MAX_RENDITIONS_KEPT {
            let t = tag(n);
            let json = renditions.json(&t).to_string();
            assert_eq!(json, serde_json::to_string(&*t).unwrap());
            assert!(renditions.by_tag.len() <= MAX_RENDITIONS_KEPT);
        }
    }

    /// The one value a query of one row and one column answers (`SELECT count(*) ...`).
    fn one<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
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
        let open_spans: i64 = one(
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
        let indexes: i64 = one(
            &conn,
            "SELECT count(*) FROM pragma_index_list('playback_rows')",
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
            conn.execute_batch(WIDE_TABLE).unwrap();
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
        let left: i64 = one(
            &conn,
            "SELECT count(*) FROM sqlite_master WHERE name = 'playback_session'",
        );
        assert_eq!(left, 0);
    }

    /// The table of records before `playback_rows`: every record whole, its texts in every row.
    const WIDE_TABLE: &str = "CREATE TABLE playback_events (
        seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, ts TEXT NOT NULL, event TEXT NOT NULL,
        video_id TEXT NOT NULL, session_id TEXT NOT NULL, node_id TEXT NOT NULL,
        rendition TEXT, width INTEGER, height INTEGER, bandwidth INTEGER, segment INTEGER,
        cache TEXT, result TEXT, bytes INTEGER, duration_ms INTEGER, detail TEXT);
        CREATE TABLE playback_sessions (session_id TEXT NOT NULL, first_seq INTEGER NOT NULL,
        last_seq INTEGER, PRIMARY KEY (session_id, first_seq));";

    /// Every column of the view `playback_events`, in its order, as text (NULL as "-").
    fn view_rows(conn: &Connection) -> Vec<Vec<String>> {
        let mut st = conn
            .prepare("SELECT * FROM playback_events ORDER BY seq")
            .unwrap();
        let n = st.column_count();
        st.query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => "-".to_string(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        other => format!("{other:?}"),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Issue 11 (P1): a node's database from before `playback_rows` keeps every record. Its
    /// wide table becomes the narrow rows with their row numbers, each session still reads
    /// back whole from its spans, the view shows what the wide table held, column for column,
    /// and new records follow the old ones.
    #[tokio::test]
    async fn a_database_with_the_wide_table_is_moved_to_narrow_rows_losing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(SQLITE_NAME);
        let mut records = Vec::new();
        for (k, event) in PlaybackEvent::ALL.into_iter().enumerate() {
            let session = ["n1-00aa", "n1-00bb"][k % 2];
            let mut r = PlaybackRecord::new(event, "v", session, "n1");
            r.ts_ms = 1_733_000_000_000 + 999 * k as i64;
            r.ts = crate::model::rfc3339_ms(r.ts_ms);
            if k % 3 != 2 {
                r.rendition = Some(RenditionTag {
                    name: ["240p", "720p"][k % 2].into(),
                    width: 1280,
                    height: [240, 720][k % 2],
                    bandwidth: 400_000 + k as u64 % 2,
                });
                r.segment = Some(k);
                r.cache = [None, Some(CacheOutcome::Hit), Some(CacheOutcome::Miss)][k % 3];
                r.bytes = Some(200_000 + k as u64);
                r.duration_ms = Some(k as u64);
            }
            r.result = (k % 2 == 0).then(|| "fetched".to_string());
            r.detail = (k == 4).then(|| "node n2 died".to_string());
            records.push(r);
        }
        let wide_view = {
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch(WIDE_TABLE).unwrap();
            for (seq, r) in records.iter().enumerate() {
                let seq = seq as i64 + 1;
                let rend = r.rendition.as_ref();
                conn.execute(
                    "INSERT INTO playback_events VALUES
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                    params![
                        seq,
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
                    ],
                )
                .unwrap();
                if seq <= 2 {
                    conn.execute(
                        "INSERT INTO playback_sessions VALUES (?1, ?2, 6)",
                        params![r.session_id, seq],
                    )
                    .unwrap();
                }
            }
            view_rows(&conn)
        };
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        log.record(tagged(PlaybackEvent::Serve, "n1-00aa", 9));
        log.flush().await;
        let conn = open_db(&db).unwrap();
        assert_eq!(
            view_rows(&conn)[..records.len()],
            wide_view[..],
            "the view shows the wide table's rows"
        );
        let kind: String = one(
            &conn,
            "SELECT type FROM sqlite_master WHERE name = 'playback_events'",
        );
        assert_eq!(kind, "view");
        for session in ["n1-00aa", "n1-00bb"] {
            let mut want: Vec<PlaybackRecord> = records
                .iter()
                .filter(|r| r.session_id == session)
                .cloned()
                .collect();
            if session == "n1-00aa" {
                want.push(read_jsonl(dir.path(), session).unwrap()[0].clone());
            }
            assert_eq!(read_sqlite(dir.path(), session).unwrap(), want, "{session}");
        }
        let seqs: Vec<i64> = conn
            .prepare("SELECT seq FROM playback_rows ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    }

    /// The view and the reader name what the writer's codes stand for: every event and cache
    /// outcome, and the RFC 3339 time of `ts_ms` to the millisecond, as the JSON lines have it.
    #[tokio::test]
    async fn the_view_names_every_code_and_times_as_the_json_lines_do() {
        let dir = tempfile::tempdir().unwrap();
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        let times = [
            0,
            999,
            1_733_000_000_123,
            1_764_892_799_999,
            4_102_444_800_000,
        ];
        for (k, event) in PlaybackEvent::ALL.into_iter().enumerate() {
            assert_eq!(PlaybackEvent::from_code(event.code()), Some(event));
            let mut r = tagged(event, "n1-00aa", k);
            r.ts_ms = times[k % times.len()];
            r.cache = [Some(CacheOutcome::Hit), Some(CacheOutcome::Miss), None][k % 3];
            log.record(r);
        }
        log.flush().await;
        let lines = read_jsonl(dir.path(), "n1-00aa").unwrap();
        assert_eq!(read_sqlite(dir.path(), "n1-00aa").unwrap(), lines);
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        let view: Vec<(String, String, Option<String>)> = conn
            .prepare("SELECT ts, event, cache FROM playback_events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<(String, String, Option<String>)> = lines
            .iter()
            .map(|r| {
                let cache = r.cache.map(|c| c.as_str().to_string());
                (r.ts.clone(), r.event.as_str().to_string(), cache)
            })
            .collect();
        assert_eq!(view, want);
    }

    /// A session's records name the video and node each was queued with, also when one differs
    /// from the first record of the session's span.
    #[tokio::test]
    async fn a_record_keeps_its_own_video_and_node_within_a_span() {
        let dir = tempfile::tempdir().unwrap();
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        let (ids, tag) = ids_and_tag("v1", "240p", 240, 400_000);
        log.record_segment(SegmentRecord::new(PlaybackEvent::Serve, &ids, &tag, 0));
        log.record(PlaybackRecord::new(
            PlaybackEvent::SessionReassigned,
            "v2",
            "n1-00aa",
            "n9",
        ));
        log.record_segment(SegmentRecord::new(PlaybackEvent::Serve, &ids, &tag, 1));
        log.flush().await;
        let got: Vec<(String, String)> = read_sqlite(dir.path(), "n1-00aa")
            .unwrap()
            .into_iter()
            .map(|r| (r.video_id, r.node_id))
            .collect();
        let pair = |v: &str, n: &str| (v.to_string(), n.to_string());
        assert_eq!(
            got,
            vec![pair("v1", "n1"), pair("v2", "n9"), pair("v1", "n1")]
        );
    }

    impl BatchState {
        /// Write `batch` as the writer thread does, to the log files of `dir`.
        fn write(&mut self, dir: &Path, conn: &mut Connection, batch: &[Queued]) {
            let mut file = JsonLines::open(dir.join(JSONL_NAME), Retention::default()).unwrap();
            write_batch(conn, &mut file, self, batch);
        }
    }

    /// A batch of more rows than one `INSERT` takes (written by several, of 64 rows down to
    /// one) keeps every session's records in order, with spans that point at them: one that
    /// ends in the middle of the batch and comes back has two. The next batch's rows follow
    /// on, with no gap in the seqs.
    #[test]
    fn a_batch_of_hundreds_is_written_in_order_with_its_spans() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        let mut w = BatchState::default();
        let (ids, tag) = ids_and_tag("v", "240p", 240, 400_000);
        let sessions = ["n1-00aa", "n1-00bb", "n1-00cc"];
        let record = |k: usize| match k % 3 {
            // n1-00aa's records queued as a request queues them, the others' whole.
            0 => Queued::Segment(SegmentRecord::new(PlaybackEvent::Serve, &ids, &tag, k)),
            // n1-00bb ends at 100 and comes back.
            _ if k == 100 => {
                Queued::Full(Box::new(tagged(PlaybackEvent::SessionEnd, sessions[1], k)))
            }
            i => Queued::Full(Box::new(tagged(PlaybackEvent::Serve, sessions[i], k))),
        };
        let (first, second) = (203, 70);
        w.write(
            dir.path(),
            &mut conn,
            &(0..first).map(record).collect::<Vec<_>>(),
        );
        w.write(
            dir.path(),
            &mut conn,
            &(first..first + second).map(record).collect::<Vec<_>>(),
        );
        for (i, session) in sessions.iter().enumerate() {
            let got = read_sqlite(dir.path(), session).unwrap();
            assert_eq!(got, read_jsonl(dir.path(), session).unwrap(), "{session}");
            let want: Vec<_> = (0..first + second).filter(|k| k % 3 == i).collect();
            let segments: Vec<_> = got.iter().filter_map(|r| r.segment).collect();
            assert_eq!(segments, want, "{session}");
        }
        let (min, max, rows): (i64, i64, i64) = conn
            .query_row(
                "SELECT min(seq), max(seq), count(*) FROM playback_rows",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((min, max, rows), (1, 273, 273));
        let spans: Vec<(i64, Option<i64>)> = conn
            .prepare("SELECT first_seq, last_seq FROM playback_sessions WHERE session_id = ?1")
            .unwrap()
            .query_map([sessions[1]], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Seqs count from 1: record k is seq k + 1.
        assert_eq!(spans, vec![(2, Some(101)), (104, None)]);
    }

    /// The spans are written before their rows, for the seqs SQLite gives rows (one more than
    /// the largest). Should SQLite give others (here a trigger inserts a row among the
    /// batch's), the batch is refused whole rather than leave spans pointing at other rows;
    /// the next batch reads back whole.
    #[test]
    fn rows_given_other_seqs_than_their_spans_name_roll_the_batch_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER extra AFTER INSERT ON playback_rows WHEN NEW.segment = 777
             BEGIN INSERT INTO playback_rows (ts_ms, event, ids) VALUES (0, 1, NEW.ids); END;",
        )
        .unwrap();
        let mut w = BatchState::default();
        let session = "n1-00aa";
        let batch = |ks: &[usize]| -> Vec<Queued> {
            ks.iter()
                .map(|&k| Queued::Full(Box::new(tagged(PlaybackEvent::Serve, session, k))))
                .collect()
        };
        // Ten rows: one INSERT of eight (the fifth row's trigger moves the sixth to eighth
        // along), then one of two.
        w.write(
            dir.path(),
            &mut conn,
            &batch(&[0, 1, 2, 3, 777, 5, 6, 7, 8, 9]),
        );
        let rows: i64 = one(&conn, "SELECT count(*) FROM playback_rows");
        assert_eq!(rows, 0, "the batch is rolled back");
        w.write(dir.path(), &mut conn, &batch(&[10, 11, 12]));
        let got: Vec<_> = read_sqlite(dir.path(), session)
            .unwrap()
            .iter()
            .filter_map(|r| r.segment)
            .collect();
        assert_eq!(got, vec![10, 11, 12]);
    }

    /// A batch whose transaction fails takes the rows it added with it (a session's ids, a
    /// rendition): the writer looks them up again, so the next records read back whole, not
    /// pointing at rows that were rolled back.
    #[tokio::test]
    async fn after_a_failed_batch_the_next_records_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON playback_rows WHEN NEW.segment = 666
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let (ids, tag) = ids_and_tag("v", "240p", 240, 400_000);
        let (_, other) = ids_and_tag("v", "720p", 720, 2_000_000);
        let mut error = tagged(PlaybackEvent::Serve, "n1-00aa", 2);
        error.rendition = Some((*other).clone());
        error.result = Some("error".into());
        log.record(error.clone());
        log.record_segment(SegmentRecord::new(PlaybackEvent::Serve, &ids, &tag, 666));
        log.flush().await;
        let renditions: i64 = one(&conn, "SELECT count(*) FROM playback_renditions");
        assert_eq!(renditions, 0);
        log.record(error);
        log.record_segment(SegmentRecord::new(PlaybackEvent::Serve, &ids, &tag, 1));
        log.flush().await;
        let got = read_sqlite(dir.path(), "n1-00aa").unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].rendition.as_ref(), Some(&*other));
        assert_eq!(got[1].rendition.as_ref(), Some(&*tag));
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
        let spans: i64 = one(
            &conn,
            "SELECT count(*) FROM playback_sessions WHERE session_id = 'n1-00aa'",
        );
        assert_eq!(spans, 0, "the ended session's span outlived its rows");
        let ids = |session: &str| -> i64 {
            one(
                &conn,
                &format!("SELECT count(*) FROM playback_ids WHERE session_id = '{session}'"),
            )
        };
        assert_eq!(
            ids("n1-00aa"),
            0,
            "the ended session's ids outlived its rows"
        );
        assert_eq!(ids("n1-00bb"), 1);
    }

    /// Each of the writer's `INSERT`s of `2^k` rows binds `2^k` rows of values (the batch
    /// tests use only some of the sizes).
    #[test]
    fn every_multi_row_insert_takes_its_rows_values() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        assert_eq!(INSERTS.len(), 7);
        for (k, sql) in INSERTS.iter().enumerate() {
            let st = conn.prepare(sql).unwrap();
            assert_eq!(st.parameter_count(), COLUMNS << k, "{sql}");
        }
    }

    /// What the writer runs for every batch must not read the whole table: at the row bound
    /// (millions of rows) a scan costs milliseconds per batch. SQLite's plan says how it reads.
    #[test]
    fn the_writers_per_batch_statements_never_scan_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_db(&dir.path().join(SQLITE_NAME)).unwrap();
        // The steps of SQLite's plan for `sql`, each parameter bound to 1.
        let plan = |sql: &str| -> Vec<String> {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let n = st.parameter_count();
            st.query_map(rusqlite::params_from_iter(vec![1i64; n]), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        for sql in [TRIM_ENDS, TRIM_ROWS, TRIM_SPANS, insert_one(), READ_SPAN] {
            let plan = plan(sql);
            assert!(
                !plan
                    .iter()
                    .any(|step| step == "SCAN r" || step.starts_with("SCAN playback_rows")),
                "{sql}: {plan:?}"
            );
        }
        // The check can fail: both ends in one SELECT scan.
        let both = plan("SELECT min(seq), max(seq) FROM playback_rows");
        assert!(both[0].starts_with("SCAN playback_rows"), "{both:?}");
    }
}
