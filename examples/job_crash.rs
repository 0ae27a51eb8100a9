//! Crash injection: the JobActor of a video crashes mid-job.
//!
//! `cargo run --example job_crash`
//!
//! The VideoActor (its supervisor) cancels the crashed job's tasks and starts a new JobActor,
//! which reads what is already in the object store and dispatches only the renditions that
//! are missing (`task_skipped` in the log); the video still ends `ready`.

#[path = "common/mod.rs"]
mod common;

use reel::actors::job::JobMsg;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::make_clip(dir.path());
    // One worker: renditions run one after another, so some are done when the job crashes.
    let config = common::config(dir.path(), 1);
    let job_name = |id: &str| format!("{}/job:{id}", config.node_id);
    let node = common::start(config.clone()).await;
    let base = node.url();
    let id = common::upload(&base, &clip).await;
    // Wait until at least one rendition is stored, then crash the job.
    loop {
        let v: serde_json::Value = reqwest::get(format!("{base}/videos/{id}/events"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = v["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "task_succeeded")
            .count();
        if done >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match ractor::registry::where_is(job_name(&id)) {
        Some(cell) => {
            println!("injecting a panic into {}", job_name(&id));
            let job: ractor::ActorRef<JobMsg> = cell.into();
            job.cast(JobMsg::InjectPanic).unwrap();
        }
        None => println!("the job finished before the crash could be injected"),
    }
    let v = common::wait_done(&base, &id).await;
    common::print_events(&base, &id).await;
    println!("\nresult: {}", v["state"]);
    node.stop().await;
}
