//! A session's timeline, read back from the playback logs (seed rule 9: "server-side logs
//! sufficient to prove bitrate/resolution changes"): what `reel session SESSION_ID` prints.
//!
//! A **rendition switch** is two consecutive `SERVE` records of the session (in time order)
//! for different renditions; it is **down** when the new rendition's `BANDWIDTH` is lower.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::storage::playback::{self, CacheOutcome, PlaybackEvent, PlaybackRecord, RenditionTag};

/// One rendition switch proven by the server's logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    /// When the first segment of the new rendition was served, ms since the Unix epoch.
    pub ts_ms: i64,
    /// The rendition served before.
    pub from: RenditionTag,
    /// The rendition served from then on.
    pub to: RenditionTag,
    /// The segment index of the first `SERVE` in the new rendition.
    pub segment: usize,
    /// The node that served it.
    pub node_id: String,
}

impl Switch {
    /// Whether the new rendition has a higher `BANDWIDTH`.
    pub fn is_up(&self) -> bool {
        self.to.bandwidth > self.from.bandwidth
    }
}

/// Every record of one session, from the logs of one or more nodes, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The session.
    pub session_id: String,
    /// Its records, oldest first.
    pub records: Vec<PlaybackRecord>,
}

impl Timeline {
    /// Read the session's records from the playback logs in the given node data directories
    /// (several when the session moved between nodes) and merge them by timestamp. Each node's
    /// SQLite table is read through the session's spans (a few index lookups, however large
    /// the log); where it has none of the session's records (trimmed, or no database) or
    /// cannot be read, the node's JSON-lines files are, whole. Both hold the same records
    /// (`storage::playback`'s tests hold them equal); the files were read first until stop 35,
    /// which on a node with a full log meant parsing up to 1.25 GiB for one session.
    ///
    /// Returns the timeline and a note for each node whose table could not be read (its
    /// records then come from its files): `reel session` prints them, so a damaged database is
    /// seen rather than passed over.
    ///
    /// Errors: a JSON-lines file exists but cannot be read.
    pub fn load(data_dirs: &[PathBuf], session_id: &str) -> Result<(Self, Vec<String>), String> {
        let mut records = Vec::new();
        let mut notes = Vec::new();
        for d in data_dirs {
            let rows = playback::read_sqlite(d, session_id).unwrap_or_else(|e| {
                notes.push(format!("{e}; read its JSON-lines files instead"));
                Vec::new()
            });
            if rows.is_empty() {
                records.extend(playback::read_jsonl(d, session_id)?);
            } else {
                records.extend(rows);
            }
        }
        Ok((Self::from_records(session_id, records), notes))
    }

    /// Order records by time (stable: one node's records keep their append order).
    pub fn from_records(session_id: &str, mut records: Vec<PlaybackRecord>) -> Self {
        records.sort_by_key(|r| r.ts_ms);
        Self {
            session_id: session_id.to_string(),
            records,
        }
    }

    /// The `SERVE` records.
    pub fn serves(&self) -> impl Iterator<Item = &PlaybackRecord> {
        self.records
            .iter()
            .filter(|r| r.event == PlaybackEvent::Serve && r.rendition.is_some())
    }

    /// The rendition switches, in order.
    pub fn switches(&self) -> Vec<Switch> {
        let mut out = Vec::new();
        let mut prev: Option<&RenditionTag> = None;
        for r in self.serves() {
            let Some(tag) = r.rendition.as_ref() else {
                continue;
            };
            if let Some(p) = prev.filter(|p| p.name != tag.name) {
                out.push(Switch {
                    ts_ms: r.ts_ms,
                    from: p.clone(),
                    to: tag.clone(),
                    segment: r.segment.unwrap_or(0),
                    node_id: r.node_id.clone(),
                });
            }
            prev = Some(tag);
        }
        out
    }

    /// The nodes that served segments, in order of their first `SERVE`.
    pub fn serving_nodes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.serves() {
            if !out.contains(&r.node_id) {
                out.push(r.node_id.clone());
            }
        }
        out
    }

    /// (hits, misses) among `SERVE` records.
    pub fn hits_and_misses(&self) -> (usize, usize) {
        let hits = self
            .serves()
            .filter(|r| r.cache == Some(CacheOutcome::Hit))
            .count();
        (hits, self.serves().count() - hits)
    }

    /// The human-readable timeline: one line per record, then the switches and a summary.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let t0 = self.records.first().map(|r| r.ts_ms).unwrap_or(0);
        let _ = writeln!(s, "session {}", self.session_id);
        if let Some(r) = self.records.first() {
            let _ = writeln!(s, "video   {}", r.video_id);
        }
        let _ = writeln!(
            s,
            "{:>9}  {:<18} {:<10} {:<22} {:>5} {:<5} result",
            "t (s)", "event", "node", "rendition", "seg", "cache"
        );
        for r in &self.records {
            let rend = r
                .rendition
                .as_ref()
                .map(|t| {
                    format!(
                        "{} {}x{} {}k",
                        t.name,
                        t.width,
                        t.height,
                        t.bandwidth / 1000
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{:>9.3}  {:<18} {:<10} {:<22} {:>5} {:<5} {}",
                (r.ts_ms - t0) as f64 / 1000.0,
                r.event.as_str(),
                r.node_id,
                rend,
                r.segment.map(|k| k.to_string()).unwrap_or_default(),
                r.cache.map(|c| c.as_str()).unwrap_or(""),
                r.result
                    .as_deref()
                    .or(r.detail.as_deref())
                    .unwrap_or_default(),
            );
        }
        let switches = self.switches();
        let _ = writeln!(s, "\nrendition switches: {}", switches.len());
        for w in &switches {
            let _ = writeln!(
                s,
                "{:>9.3}  {} {} ({} bit/s) -> {} ({} bit/s) at segment {} on {}",
                (w.ts_ms - t0) as f64 / 1000.0,
                if w.is_up() { "UP  " } else { "DOWN" },
                w.from.name,
                w.from.bandwidth,
                w.to.name,
                w.to.bandwidth,
                w.segment,
                w.node_id
            );
        }
        let (hits, misses) = self.hits_and_misses();
        let prefetches = self
            .records
            .iter()
            .filter(|r| r.event == PlaybackEvent::PrefetchStart)
            .count();
        let _ = writeln!(
            s,
            "served {} segments ({hits} cache hits, {misses} misses), {prefetches} prefetches, nodes: {}",
            hits + misses,
            self.serving_nodes().join(" then ")
        );
        for r in self
            .records
            .iter()
            .filter(|r| r.event == PlaybackEvent::SessionReassigned)
        {
            let _ = writeln!(
                s,
                "reassigned to {}: {}",
                r.node_id,
                r.detail.as_deref().unwrap_or("")
            );
        }
        s
    }

    /// An SVG step chart of the served rendition's `BANDWIDTH` over time, one dot per `SERVE`
    /// (filled for cache hits), switches marked.
    pub fn render_svg(&self) -> String {
        let (w, h, pad, left) = (900.0_f64, 360.0_f64, 60.0_f64, 110.0_f64);
        let serves: Vec<_> = self.serves().collect();
        let t0 = serves.first().map(|r| r.ts_ms).unwrap_or(0);
        let t1 = serves.last().map(|r| r.ts_ms).unwrap_or(t0).max(t0 + 1);
        let mut levels: Vec<&RenditionTag> =
            serves.iter().filter_map(|r| r.rendition.as_ref()).collect();
        levels.sort_by_key(|t| t.bandwidth);
        levels.dedup_by(|a, b| a.name == b.name);
        let n = levels.len().max(1);
        let x = |ts: i64| left + (ts - t0) as f64 / (t1 - t0) as f64 * (w - left - pad);
        let y = |name: &str| {
            let i = levels.iter().position(|t| t.name == name).unwrap_or(0);
            if n == 1 {
                h / 2.0
            } else {
                h - pad - i as f64 / (n - 1) as f64 * (h - 2.0 * pad)
            }
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{pad}" y="20">session {} — rendition over time ({} s)</text>"##,
            xml(&self.session_id),
            (t1 - t0) as f64 / 1000.0
        );
        for t in &levels {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y0}" y2="{y0}" stroke="#ddd"/><text x="4" y="{}">{} {}k</text>"##,
                w - pad,
                y(&t.name) + 4.0,
                xml(&t.name),
                t.bandwidth / 1000,
                y0 = y(&t.name)
            );
        }
        let mut path = String::new();
        let mut last_y = None;
        for r in &serves {
            let Some(t) = r.rendition.as_ref() else {
                continue;
            };
            let (px, py) = (x(r.ts_ms), y(&t.name));
            match last_y {
                None => {
                    let _ = write!(path, "M{px:.1},{py:.1}");
                }
                Some(ly) => {
                    let _ = write!(path, " L{px:.1},{ly:.1} L{px:.1},{py:.1}");
                }
            }
            last_y = Some(py);
        }
        let _ = writeln!(
            s,
            r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##
        );
        for r in &serves {
            let Some(t) = r.rendition.as_ref() else {
                continue;
            };
            let fill = if r.cache == Some(CacheOutcome::Hit) {
                "#2ca02c"
            } else {
                "white"
            };
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="#2ca02c"><title>seg {} {} {}</title></circle>"##,
                x(r.ts_ms),
                y(&t.name),
                r.segment.unwrap_or(0),
                xml(&t.name),
                r.cache.map(|c| c.as_str()).unwrap_or("")
            );
        }
        for sw in self.switches() {
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" x2="{px:.1}" y1="{pad}" y2="{}" stroke="{}" stroke-dasharray="4 3"/>"##,
                h - pad,
                if sw.is_up() { "#2ca02c" } else { "#d62728" },
                px = x(sw.ts_ms)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{pad}" y="{}">time → (filled dot: cache hit; dashed: switch, green up, red down)</text>"##,
            h - 15.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(ts: i64, name: &str, bw: u64, seg: usize) -> PlaybackRecord {
        let mut r = PlaybackRecord::new(PlaybackEvent::Serve, "v", "s", "n1");
        r.ts_ms = ts;
        r.rendition = Some(RenditionTag {
            name: name.into(),
            width: 1,
            height: 1,
            bandwidth: bw,
        });
        r.segment = Some(seg);
        r.cache = Some(CacheOutcome::Miss);
        r
    }

    /// A session's timeline comes from the node's SQLite table when it has the session (the
    /// JSON-lines files gone here, so only the table can answer), and from the files when the
    /// table cannot (the database gone); either way the same records.
    #[tokio::test]
    async fn the_timeline_reads_the_table_and_falls_back_to_the_files() {
        use crate::storage::playback::{PlaybackLog, Retention, JSONL_NAME, SQLITE_NAME};
        let dir = tempfile::tempdir().unwrap();
        {
            let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
            for (k, (name, bw)) in [("low", 100), ("high", 900), ("low", 100)]
                .into_iter()
                .enumerate()
            {
                let mut r = serve(0, name, bw, k);
                r.ts_ms = 1_000 + k as i64;
                r.session_id = "n1-00aa".into();
                log.record(r);
            }
            log.flush().await;
        }
        let dirs = [dir.path().to_path_buf()];
        let (from_files, notes) = Timeline::load(&dirs, "n1-00aa").unwrap();
        assert_eq!(from_files.switches().len(), 2);
        assert!(notes.is_empty(), "{notes:?}");
        let jsonl = dir.path().join(JSONL_NAME);
        let kept = std::fs::read(&jsonl).unwrap();
        std::fs::remove_file(&jsonl).unwrap();
        let (from_table, _) = Timeline::load(&dirs, "n1-00aa").unwrap();
        assert_eq!(from_table, from_files, "read from the table alone");
        std::fs::write(&jsonl, kept).unwrap();
        std::fs::remove_file(dir.path().join(SQLITE_NAME)).unwrap();
        let (again, notes) = Timeline::load(&dirs, "n1-00aa").unwrap();
        assert_eq!(again, from_files, "read from the files alone");
        assert!(notes.is_empty(), "no database is no fault: {notes:?}");
        // A damaged database: the records still come from the files, and the fault is told.
        // Alone: a write-ahead log left beside it could still hold a readable first page.
        for side in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("{SQLITE_NAME}{side}")));
        }
        std::fs::write(dir.path().join(SQLITE_NAME), vec![b'x'; 8192]).unwrap();
        let (damaged, notes) = Timeline::load(&dirs, "n1-00aa").unwrap();
        assert_eq!(damaged, from_files, "read from the files");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains(SQLITE_NAME), "{notes:?}");
    }

    #[test]
    fn switches_down_and_up_are_found_in_time_order() {
        let t = Timeline::from_records(
            "s",
            vec![
                serve(3, "low", 100, 2),
                serve(1, "high", 900, 0),
                serve(2, "high", 900, 1),
                serve(4, "high", 900, 3),
            ],
        );
        let sw = t.switches();
        assert_eq!(sw.len(), 2);
        assert!(!sw[0].is_up() && sw[0].segment == 2);
        assert!(sw[1].is_up() && sw[1].to.name == "high");
        let text = t.render_text();
        assert!(
            text.contains("DOWN high (900 bit/s) -> low (100 bit/s) at segment 2"),
            "{text}"
        );
        assert!(t.render_svg().starts_with("<svg"));
    }
}
