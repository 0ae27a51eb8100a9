//! The node-local, append-only event log in SQLite (seed section 7: "logs are not replicated").
//!
//! Every state transition and task attempt is one row: timestamp, node id, video id, kind, task,
//! attempt, outcome, detail. SQLite runs in WAL mode; calls go through `spawn_blocking` because a
//! `rusqlite::Connection` blocks and is not `Sync`. Each event is also written to `tracing`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::model::{now_ms, now_rfc3339};

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Row id: the order of appends on this node.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// RFC 3339 timestamp, UTC.
    pub ts: String,
    /// The node that appended it.
    pub node: String,
    /// The video it concerns.
    pub video_id: Option<String>,
    /// What happened (`upload_received`, `state_changed`, `task_dispatched`, ...).
    pub kind: String,
    /// The task (`720p`), when it concerns one.
    pub task: Option<String>,
    /// The attempt number of that task, from 1.
    pub attempt: Option<u32>,
    /// Outcome (`ok`, `transient`, `permanent`, a state name).
    pub outcome: Option<String>,
    /// Free text for people.
    pub detail: Option<String>,
}

/// An event to append; build with [`NewEvent::video`] and the setters.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    video_id: Option<String>,
    kind: String,
    task: Option<String>,
    attempt: Option<u32>,
    outcome: Option<String>,
    detail: Option<String>,
}

impl NewEvent {
    /// An event of `kind` about `video_id`.
    pub fn video(video_id: &str, kind: &str) -> Self {
        Self {
            video_id: Some(video_id.to_string()),
            kind: kind.to_string(),
            ..Default::default()
        }
    }

    /// An event about the node itself, no video.
    pub fn node(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            ..Default::default()
        }
    }

    /// A count of attempts or restarts, without a task.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// The task and attempt it concerns.
    pub fn task(mut self, task: &str, attempt: u32) -> Self {
        self.task = Some(task.to_string());
        self.attempt = Some(attempt);
        self
    }

    /// Its outcome.
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = Some(outcome.into());
        self
    }

    /// Text for people.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Handle on the event log. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    conn: Arc<Mutex<Connection>>,
    node: String,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("node", &self.node)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms    INTEGER NOT NULL,
    ts       TEXT NOT NULL,
    node     TEXT NOT NULL,
    video_id TEXT,
    kind     TEXT NOT NULL,
    task     TEXT,
    attempt  INTEGER,
    outcome  TEXT,
    detail   TEXT
);
CREATE INDEX IF NOT EXISTS events_video ON events(video_id, seq);
";

impl EventLog {
    /// Open (or create) the log at `path` for node `node`.
    ///
    /// Errors: the file cannot be opened or the schema cannot be created.
    pub fn open(path: &Path, node: &str) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            node: node.to_string(),
        })
    }

    /// An in-memory log (tests).
    pub fn in_memory(node: &str) -> Self {
        let conn = Connection::open_in_memory().expect("in-memory sqlite");
        conn.execute_batch(SCHEMA).expect("schema");
        Self {
            conn: Arc::new(Mutex::new(conn)),
            node: node.to_string(),
        }
    }

    /// Append one event. A failure to write is logged, never raised: the event log must not
    /// stop processing.
    pub async fn append(&self, e: NewEvent) {
        tracing::info!(
            video_id = e.video_id.as_deref().unwrap_or(""),
            task = e.task.as_deref().unwrap_or(""),
            attempt = e.attempt.unwrap_or(0),
            outcome = e.outcome.as_deref().unwrap_or(""),
            detail = e.detail.as_deref().unwrap_or(""),
            "event {}",
            e.kind
        );
        let conn = self.conn.clone();
        let node = self.node.clone();
        let res = tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn.prepare_cached(
                "INSERT INTO events (ts_ms, ts, node, video_id, kind, task, attempt, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            stmt.execute(params![
                now_ms(),
                now_rfc3339(),
                node,
                e.video_id,
                e.kind,
                e.task,
                e.attempt,
                e.outcome,
                e.detail
            ])
            .map(|_| ())
        })
        .await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!("event log write failed: {err}"),
            Err(err) => tracing::error!("event log task failed: {err}"),
        }
    }

    /// The events of one video on this node, oldest first.
    pub async fn for_video(&self, video_id: &str) -> Result<Vec<Event>, rusqlite::Error> {
        let conn = self.conn.clone();
        let id = video_id.to_string();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn.prepare_cached(
                "SELECT seq, ts_ms, ts, node, video_id, kind, task, attempt, outcome, detail
                 FROM events WHERE video_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(Event {
                    seq: r.get(0)?,
                    ts_ms: r.get(1)?,
                    ts: r.get(2)?,
                    node: r.get(3)?,
                    video_id: r.get(4)?,
                    kind: r.get(5)?,
                    task: r.get(6)?,
                    attempt: r.get(7)?,
                    outcome: r.get(8)?,
                    detail: r.get(9)?,
                })
            })?;
            rows.collect()
        })
        .await
        .unwrap_or_else(|e| Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_come_back_in_order_per_video() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("e.sqlite"), "n1").unwrap();
        log.append(NewEvent::video("v1", "upload_received")).await;
        log.append(NewEvent::video("v2", "upload_received")).await;
        log.append(
            NewEvent::video("v1", "task_dispatched")
                .task("360p", 2)
                .outcome("ok"),
        )
        .await;
        let ev = log.for_video("v1").await.unwrap();
        let kinds: Vec<_> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["upload_received", "task_dispatched"]);
        assert_eq!(ev[1].attempt, Some(2));
        assert_eq!(ev[1].node, "n1");
        assert!(ev[0].seq < ev[1].seq);
    }
}
