//! Crash injection: a transcode worker panics in the middle of a task.
//!
//! `cargo run --example worker_panic`
//!
//! The WorkerPool (its supervisor) replaces the worker and reports the task as failed; the
//! JobActor retries it (attempt 2) after its backoff; the video still ends `ready`.

#[path = "common/mod.rs"]
mod common;

use reel::actors::transcode_worker::WorkerMsg;
use reel::actors::worker_pool::PoolMsg;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::make_clip(dir.path());
    let node = common::start(common::config(dir.path(), 2)).await;
    let base = node.url();
    let id = common::upload(&base, &clip).await;
    // Wait for a worker to pick up one of this video's tasks, then make it panic.
    let victim = loop {
        let snap = ractor::call!(node.node.refs.pool, PoolMsg::Snapshot).unwrap();
        if let Some(b) = snap.busy.into_iter().find(|b| b.video_id == id) {
            break b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    println!(
        "injecting a panic into the worker running {} (attempt {})",
        victim.task, victim.attempt
    );
    victim.worker.cast(WorkerMsg::InjectPanic).unwrap();
    let v = common::wait_done(&base, &id).await;
    common::print_events(&base, &id).await;
    let snap = ractor::call!(node.node.refs.pool, PoolMsg::Snapshot).unwrap();
    println!(
        "\nresult: {} ; workers alive {} ; workers replaced {}",
        v["state"], snap.workers, snap.restarts
    );
    node.stop().await;
}
