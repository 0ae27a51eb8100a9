//! Crash injection: a worker or the job actor fails mid-job, and the video still ends ready
//! with every rendition whole.

use std::time::Duration;

use reel::actors::job::JobMsg;
use reel::actors::transcode_worker::WorkerMsg;
use reel::actors::worker_pool::PoolMsg;

use crate::helpers::*;

async fn busy_worker(node: &reel::RunningNode, id: &str) -> reel::actors::worker_pool::BusyWorker {
    let until = tokio::time::Instant::now() + PROCESSING_DEADLINE;
    loop {
        let snap = ractor::call!(node.node.refs.pool, PoolMsg::Snapshot).unwrap();
        if let Some(b) = snap.busy.into_iter().find(|b| b.video_id == id) {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no worker picked up a task"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_panics_mid_task_is_replaced_and_the_task_retried() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let (_, v) = upload(&base, &clip("long")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    let victim = busy_worker(&node, &id).await;
    victim.worker.cast(WorkerMsg::InjectPanic).unwrap();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let events = event_kinds(&base, &id).await;
    assert_eq!(count(&events, "worker_restarted"), 1, "{events:#?}");
    let retried = events.iter().any(|e| {
        e["kind"] == "task_dispatched" && e["task"] == victim.task.as_str() && e["attempt"] == 2
    });
    assert!(
        retried,
        "the crashed task ran again as attempt 2: {events:#?}"
    );
    let snap = ractor::call!(node.node.refs.pool, PoolMsg::Snapshot).unwrap();
    assert_eq!(
        (snap.workers, snap.restarts),
        (2, 1),
        "the pool is whole again"
    );
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_actor_that_crashes_is_restarted_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // One worker: renditions run one after the other, so the crash lands between them.
    config.workers = 1;
    let node_name = config.node_id.clone();
    let node = start(config).await;
    let base = node.url();
    let (_, v) = upload(&base, &clip("long")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    let job_name = format!("{node_name}/job:{id}");
    // Wait until the first rendition is done, then crash the job while the second runs.
    wait_until("one rendition done", PROCESSING_DEADLINE, || {
        let base = base.clone();
        let id = id.clone();
        async move { count(&event_kinds(&base, &id).await, "task_succeeded") >= 1 }
    })
    .await;
    let job: ractor::ActorRef<JobMsg> = ractor::registry::where_is(job_name.clone())
        .expect("job runs")
        .into();
    job.cast(JobMsg::InjectPanic).unwrap();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    // The record turns ready first; the event that logs it follows at once.
    wait_until(
        "the ready transition in the log",
        std::time::Duration::from_secs(10),
        || {
            let (base, id) = (base.clone(), id.clone());
            async move { count(&event_kinds(&base, &id).await, "state_changed") == 2 }
        },
    )
    .await;
    let events = event_kinds(&base, &id).await;
    assert_eq!(count(&events, "job_actor_restarted"), 1, "{events:#?}");
    let restart = events
        .iter()
        .find(|e| e["kind"] == "job_actor_restarted")
        .unwrap();
    assert!(
        restart["detail"]
            .as_str()
            .unwrap()
            .ends_with("restarting after 50 ms"),
        "restarts back off (backoff_initial_ms): {restart}"
    );
    assert!(
        count(&events, "task_skipped") >= 1,
        "finished work is not redone: {events:#?}"
    );
    // Nothing stored before the crash runs again after it.
    let skipped: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "task_skipped")
        .map(|e| e["task"].clone())
        .collect();
    let after_restart = events
        .iter()
        .skip_while(|e| e["kind"] != "job_actor_restarted");
    for e in after_restart.filter(|e| e["kind"] == "task_dispatched") {
        assert!(
            !skipped.contains(&e["task"]),
            "a stored task ran again: {e}"
        );
    }
    assert_eq!(
        count(&events, "state_changed"),
        2,
        "processing, then ready once: {events:#?}"
    );
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    node.stop().await;
}
