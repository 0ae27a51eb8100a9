//! The playback log's cost per record (issue 11, P1): queues N `SERVE` records of 64 sessions
//! (default 200,000), waits for the writer ([`PlaybackLog::flush`] every 10,000) and prints the
//! process's CPU time per record (the writer thread's JSON line and SQLite row, plus building
//! and queueing the record, printed apart). Not a test: the figure depends on the machine.
//!
//!     cargo run --release --example playback_log_cost [-- RECORDS]
use reel::storage::playback::*;

/// User and system CPU time of the whole process, seconds.
fn cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 * 1e-6;
    t(u.user_time()) + t(u.system_time())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let log = PlaybackLog::open(dir.path(), Retention::default()).unwrap();
    let sessions: Vec<String> = (0..64)
        .map(|i| format!("bench-{:016x}", i * 7919 + 12345))
        .collect();
    let mut build = 0.0;
    let t0 = cpu();
    for round in 0..(n / 10_000) {
        let b0 = cpu();
        for i in 0..10_000 {
            let mut r = PlaybackRecord::new(
                PlaybackEvent::Serve,
                "c6b7bedf9bf672cd8e7444234658fa9a",
                &sessions[i % 64],
                "bench",
            );
            r.rendition = Some(RenditionTag {
                name: "720p".into(),
                width: 1280,
                height: 720,
                bandwidth: 1_200_000,
            });
            r.segment = Some(round % 100);
            r.cache = Some(CacheOutcome::Hit);
            r.result = Some("ok".into());
            r.bytes = Some(218_034);
            r.duration_ms = Some(0);
            log.record(r);
        }
        build += cpu() - b0;
        log.flush().await;
    }
    let total = cpu() - t0;
    println!(
        "{n} records: {:.2} us a record in all, of which {:.2} building and queueing; shed {}",
        total * 1e6 / n as f64,
        build * 1e6 / n as f64,
        log.shed_total()
    );
}
