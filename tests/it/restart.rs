//! A node process killed with SIGKILL mid-job finishes the job after it restarts, with no
//! manual step; one stopped with SIGTERM lets its lease go first. Real `reel serve` processes
//! on a loopback port.

use std::time::Duration;

use crate::helpers::*;

fn serve(dir: &std::path::Path, addr: std::net::SocketAddr) -> ReelProcess {
    let (d, a) = (dir.to_str().unwrap(), addr.to_string());
    ReelProcess::start(
        &["serve", "--data-dir", d, "--listen", &a],
        &[],
        dir.join("node.log"),
    )
}

/// A node on `dir` and `addr` with the long clip uploaded and its first task started: the
/// node, its base URL and the video's id.
async fn mid_job(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
) -> (ReelProcess, String, String) {
    let base = format!("http://{addr}");
    let node = serve(dir, addr);
    let id = long_clip_mid_job(&base).await;
    (node, base, id)
}

/// Once the node at `base` answers: upload the long clip, wait until its first task has
/// started, and give the video's id.
async fn long_clip_mid_job(base: &str) -> String {
    wait_healthy(base).await;
    let (status, v) = upload(base, &clip("long")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    wait_until("a task started", PROCESSING_DEADLINE, || {
        let (base, id) = (base.to_string(), id.clone());
        async move { count(&event_kinds(&base, &id).await, "task_started") >= 1 }
    })
    .await;
    id
}

/// The names in a local store's `uploads/direct/` under `objects`: `PUT` bodies being staged
/// (`{token}#{n}` while partial).
fn staged_bodies(objects: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(objects.join("uploads/direct"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A `PUT /upload` of 100 MB on a raw connection to `addr`, of which `first` has been sent,
/// once the node is receiving it (its body is being staged in the store at `objects`): the
/// connection, for the test to go on sending, or to drop. Without that wait, a stop could
/// come before the node had taken the connection from the listen queue.
async fn put_under_way(
    addr: std::net::SocketAddr,
    first: &[u8],
    objects: &std::path::Path,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"PUT /upload HTTP/1.1\r\nHost: reel\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    sock.write_all(first).await.unwrap();
    wait_until("the body is being staged", Duration::from_secs(30), || {
        let found = staged_bodies(objects);
        async move { !found.is_empty() }
    })
    .await;
    sock
}

/// A node on the local store (`dir/objects`) with `limits` (lines of its `[limits]` table),
/// from a one-node `cluster.toml` in `dir` ([`serve_one_node`]).
fn serve_with_limits(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    limits: &str,
) -> ReelProcess {
    serve_one_node(
        dir,
        addr,
        &format!("storage = \"local:objects\"\n[limits]\n{limits}"),
    )
}

/// Send the rest of `source` after its first 64 KiB on `sock`, 16 bytes every 100 ms: never
/// silent long enough to be cut for it (limits.body_idle_seconds), and days from its end.
/// Answers whether the connection was closed under it.
fn trickle(mut sock: tokio::net::TcpStream, source: Vec<u8>) -> tokio::task::JoinHandle<bool> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for piece in source[64 * 1024..].chunks(16) {
            pace.tick().await;
            if sock.write_all(piece).await.is_err() {
                return true;
            }
        }
        false
    })
}

/// A second node on the same `dir` and `addr`, once video `id` is `ready` there: the node
/// and the video's events.
async fn restarted_until_ready(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    id: &str,
) -> (ReelProcess, Vec<serde_json::Value>) {
    let base = format!("http://{addr}");
    let node = serve(dir, addr);
    wait_healthy(&base).await;
    let v = wait_terminal(&base, id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    (node, event_kinds(&base, id).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_job_finishes_the_job_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (mut first, base, id) = mid_job(dir.path(), addr).await;
    first.kill9();
    assert!(
        reqwest::get(format!("{base}/health")).await.is_err(),
        "the node is down"
    );

    let (_second, events) = restarted_until_ready(dir.path(), addr, &id).await;
    assert_eq!(count(&events, "job_started"), 1, "{events:#?}");
    assert_eq!(count(&events, "job_resumed"), 1, "{events:#?}");
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_stopped_with_sigterm_mid_job_releases_its_lease_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (mut first, base, id) = mid_job(dir.path(), addr).await;
    let (_, v) = get_json(&format!("{base}/videos/{id}")).await;
    assert_eq!(v["state"], "processing", "stopped mid-job: {v}");
    first.terminate();

    // The store holds the release of the first run's lease: a graceful stop let it go (a
    // killed process leaves it to run out), so whoever comes next claims the video at once.
    let leases = format!("leases/video/{id}/");
    let released: Vec<String> = files_under(dir.path())
        .into_iter()
        .filter(|f| f.contains(&leases) && f.ends_with(".released"))
        .collect();
    assert_eq!(
        released.len(),
        1,
        "one released lease after SIGTERM: {:?}\n{}",
        files_under(dir.path()),
        std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
    );

    let (_second, events) = restarted_until_ready(dir.path(), addr, &id).await;
    assert_eq!(
        count(&events, "lease_released"),
        2,
        "at the stop and at the commit: {events:#?}"
    );
    assert_eq!(count(&events, "job_resumed"), 1, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_cuts_an_upload_that_would_not_end_and_the_node_exits() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let mut node = serve(dir.path(), addr);
    wait_healthy(&base).await;
    // A client sending a 100 MB `PUT` a few bytes at a time: never silent long enough to be
    // cut for it (limits.body_idle_seconds), and days from its end.
    let source = std::fs::read(clip("long")).unwrap();
    let sock = put_under_way(addr, &source[..64 * 1024], &dir.path().join("objects")).await;
    let trickle = trickle(sock, source);
    assert!(
        node.terminate(),
        "the node exits by itself while the upload is still being sent\n{}",
        std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(log.contains("are cut"), "{log}");
    assert!(
        trickle.await.unwrap(),
        "the client's connection was closed under it"
    );
    // Nothing of the cut upload became a video.
    assert!(
        !files_under(dir.path())
            .iter()
            .any(|f| f.contains("record.json")),
        "{:?}",
        files_under(dir.path())
    );
}

/// `limits.shutdown_drain_seconds` is the stop's bound: with 1 (not the default 10), the
/// upload that would not end is cut after 1 s, and the node says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_drains_for_the_configured_time() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let mut node = serve_with_limits(dir.path(), addr, "shutdown_drain_seconds = 1");
    wait_healthy(&base).await;
    let source = std::fs::read(clip("long")).unwrap();
    let sock = put_under_way(addr, &source[..64 * 1024], &dir.path().join("objects")).await;
    let trickle = trickle(sock, source);
    assert!(node.terminate(), "the node exits by itself");
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(log.contains("still running after 1 s are cut"), "{log}");
    assert!(trickle.await.unwrap(), "the client's connection was closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_on_a_data_directory_in_use_is_refused_and_leaves_the_first_alone() {
    // A user's slip: `reel serve` running in a directory, and `reel serve --listen` on another
    // port started there too, both on the default ./reel-data.
    let cwd = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (a1, a2) = (free_addr(), free_addr());
    let first = ReelProcess::serve_in(cwd.path(), a1, logs.path().join("first.log"));
    let base = format!("http://{a1}");
    let id = long_clip_mid_job(&base).await;
    // Something of the first node's in its scratch, as a running task's outputs are.
    let marker = cwd.path().join("reel-data/scratch/kept-by-the-first-node");
    std::fs::write(&marker, b"x").unwrap();

    let second_log = logs.path().join("second.log");
    let mut second = ReelProcess::serve_in(cwd.path(), a2, second_log.clone());
    let exit = second.wait_exit(Duration::from_secs(30));
    let said = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the second node must stop by itself with an error, got {exit:?}\n{said}"
    );
    assert!(
        said.contains(&format!(
            "reel-data is in use by another reel process (pid {})",
            first.pid()
        )),
        "the second node says which directory and which process: {said}"
    );
    assert!(
        marker.exists(),
        "the second node cleared the first's scratch"
    );

    // The first node's job went on undisturbed: one claim of its lease, never taken from it.
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let events = event_kinds(&base, &id).await;
    assert_eq!(count(&events, "lease_claimed"), 1, "{events:#?}");
    assert_eq!(count(&events, "stood_down"), 0, "{events:#?}");
    assert_eq!(count(&events, "job_resumed"), 0, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_put_cut_by_a_crash_left_is_deleted_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    // A one-node file whose uploads may rest 2 s (instead of a day) before they count as cut.
    let start = || serve_with_limits(dir.path(), addr, "upload_expiry_seconds = 2");
    let objects = dir.path().join("objects");
    let leftovers = || staged_bodies(&objects);
    let mut node = start();
    wait_healthy(&base).await;
    // A 100 MB PUT under way: its body is being written to a partial file.
    let source = std::fs::read(clip("long")).unwrap();
    let sock = put_under_way(addr, &source, &objects).await;
    node.kill9();
    drop(sock);
    assert!(
        leftovers().iter().any(|f| f.contains('#')),
        "the killed node left its partial body: {:?}",
        leftovers()
    );

    let _node = start();
    wait_healthy(&base).await;
    wait_until(
        "the restarted node deletes the cut body",
        Duration::from_secs(30),
        || {
            let found = leftovers();
            async move { found.is_empty() }
        },
    )
    .await;
    // The sweep says so once it has deleted everything: its line may come a moment after the
    // files are gone.
    let log = dir.path().join("node.log");
    wait_until("the node logs the sweep", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("deleted what uploads cut by a crash left") }
    })
    .await;
}
