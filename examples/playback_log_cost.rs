//! The playback log's cost per record (issue 11, P1): queues N `SERVE` records of 64 sessions
//! (default 200,000), waits for the writer ([`PlaybackLog::flush`] every 10,000) and prints the
//! process's CPU time per record (the writer thread's JSON line and SQLite row, plus building
//! and queueing the record, printed apart). Twice: as a segment request queues them
//! ([`SegmentRecord`], `PlaybackLog::record_segment`) and as full records
//! ([`PlaybackRecord`], `PlaybackLog::record`). Not a test: the figures depend on the machine.
//!
//!     cargo run --release --example playback_log_cost [-- RECORDS]
use std::sync::Arc;

use reel::storage::playback::*;

/// User and system CPU time of the whole process, seconds.
fn cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 * 1e-6;
    t(u.user_time()) + t(u.system_time())
}

/// Queue `n` records, `make(i, round)` queueing the `i`th of a round of 10,000, and print the
/// CPU per record.
async fn measure(what: &str, n: usize, mut make: impl FnMut(&PlaybackLog, usize, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
    let mut build = 0.0;
    let t0 = cpu();
    for round in 0..(n / 10_000) {
        let b0 = cpu();
        for i in 0..10_000 {
            make(&log, i, round);
        }
        build += cpu() - b0;
        log.flush().await;
    }
    let total = cpu() - t0;
    println!(
        "{what}: {n} records, {:.2} us a record in all, of which {:.2} building and queueing; shed {}",
        total * 1e6 / n as f64,
        build * 1e6 / n as f64,
        log.shed_total()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200_000);
    let video = "c6b7bedf9bf672cd8e7444234658fa9a";
    let sessions: Vec<Arc<SessionIds>> = (0..64)
        .map(|i| {
            Arc::new(SessionIds::new(
                video.into(),
                format!("bench-{:016x}", i * 7919 + 12345),
                "bench".into(),
            ))
        })
        .collect();
    let tag = Arc::new(RenditionTag {
        name: "720p".into(),
        width: 1280,
        height: 720,
        bandwidth: 1_200_000,
    });
    measure("segment records", n, |log, i, round| {
        let mut r = SegmentRecord::new(PlaybackEvent::Serve, &sessions[i % 64], &tag, round % 100);
        r.cache = Some(CacheOutcome::Hit);
        r.result = Some("ok");
        r.bytes = Some(218_034);
        r.duration_ms = Some(0);
        log.record_segment(r);
    })
    .await;
    measure("full records", n, |log, i, round| {
        let ids = &sessions[i % 64];
        let mut r = PlaybackRecord::new(PlaybackEvent::Serve, video, ids.session_id(), "bench");
        r.rendition = Some((*tag).clone());
        r.segment = Some(round % 100);
        r.cache = Some(CacheOutcome::Hit);
        r.result = Some("ok".into());
        r.bytes = Some(218_034);
        r.duration_ms = Some(0);
        log.record(r);
    })
    .await;
}
