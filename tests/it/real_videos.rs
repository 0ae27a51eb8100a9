//! Real videos through the README's own commands (issue 8): `reel serve` started the way a user
//! starts it (its defaults, so the relative `./reel-data`), and the repository's own
//! `cluster.toml` copied unchanged into a fresh directory (only its ports rewritten), each given
//! a one-minute camera-style clip, long enough to be encoded in chunks. Temporary absolute
//! directories and clips shorter than a chunk hid that every such video failed.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// Processing a minute on a loaded 2-core machine, with room to spare.
const MINUTE_DEADLINE: Duration = Duration::from_secs(600);

/// The default segment duration, seconds.
const SEGMENT: f64 = 4.0;

/// A one-minute clip like a camera's: H.264 High with B-frames, 29.97 fps (30000/1001, the
/// rate that is not a whole number of frames per chunk), AAC stereo, the `moov`
/// box at the end. 640x360 keeps the test quick (the 360p and 240p rungs).
async fn minute_clip(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("camera-60s.mp4");
    ffmpeg_out(&[
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30000/1001",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "60",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-profile:v",
        "high",
        "-bf",
        "2",
        "-c:a",
        "aac",
        "-ac",
        "2",
        out.to_str().unwrap(),
    ])
    .await;
    out
}

/// Upload `clip` to `upload_base` (what `curl -T` does), wait for `ready` from `status_base`,
/// play it to the end with ffmpeg, and check every rendition against the source: segments
/// decode, audio in sync, frames kept, segment count and duration within one segment.
async fn upload_and_check(
    upload_base: &str,
    status_base: &str,
    clip: &Path,
    work: &Path,
) -> String {
    let (status, v) = upload(upload_base, clip).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(status_base, &id, MINUTE_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    play(&format!("{status_base}/videos/{id}/master.m3u8"))
        .await
        .expect("the multivariant playlist plays to the end with ffmpeg -xerror");
    let frames = count_frames(clip, "v:0").await;
    let facts = check_all_renditions(status_base, &id, work).await;
    let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["360p", "240p"]);
    for f in &facts {
        assert_eq!(f.frames, frames, "{}: every frame of the source", f.name);
        assert!(
            (f.segments as f64 - 60.0 / SEGMENT).abs() <= 1.0,
            "{}: {} segments",
            f.name,
            f.segments
        );
        assert!(
            (f.duration - 60.0).abs() <= SEGMENT,
            "{}: {} s",
            f.name,
            f.duration
        );
        assert_eq!(f.audio_channels, Some(2), "{}", f.name);
    }
    id
}

/// Copy the repository's `cluster.toml` into `dir`, unchanged but for its six ports (free
/// loopback ones). Returns the nodes' HTTP base URLs, node-1 first.
fn repository_cluster_toml(dir: &Path) -> Vec<String> {
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml"))
            .unwrap();
    let mut urls = Vec::new();
    for port in ["8080", "8081", "8082", "9080", "9081", "9082"] {
        let from = format!("\"127.0.0.1:{port}\"");
        assert_eq!(
            text.matches(&from).count(),
            1,
            "cluster.toml names {from} once"
        );
        let addr = free_addr();
        text = text.replace(&from, &format!("\"{addr}\""));
        if port.starts_with("80") {
            urls.push(format!("http://{addr}"));
        }
    }
    std::fs::write(dir.join("cluster.toml"), &text).unwrap();
    urls
}

/// `reel cluster-up --config cluster.toml` in `cwd`, with the repository's `cluster.toml`
/// (ports rewritten), once every node answers: the nodes' URLs, cluster-up's log (its nodes
/// log there too), and the process.
async fn cluster_up_in(cwd: &Path) -> (Vec<String>, std::path::PathBuf, ReelProcess) {
    let urls = repository_cluster_toml(cwd);
    let log = cwd.join("cluster-up.log");
    let up = ReelProcess::start_in(
        cwd,
        &["cluster-up", "--config", "cluster.toml"],
        &[("REEL_CLUSTER_COOKIE", "cluster-up-test-cookie")],
        log.clone(),
    );
    for url in &urls {
        wait_healthy(url).await;
    }
    (urls, log, up)
}

/// The PID `reel cluster-up` reported for node `id` in its log `log` ("started {id} (pid N)").
fn started_pid(log: &Path, id: &str) -> i32 {
    let prefix = format!("started {id} (pid ");
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.strip_suffix(')')?.parse().ok())
        .unwrap_or_else(|| panic!("no pid of {id} in {}", tail(log)))
}

/// A node process this test started (through `cluster-up`): killed when dropped if it is
/// still there, so that a failed assertion does not leave it running or hanging (SIGSTOP).
/// Only a process whose working directory is still the test's own is killed (not another
/// process that took the PID).
struct KillIfLeft {
    pid: i32,
    cwd: std::path::PathBuf,
}

impl Drop for KillIfLeft {
    fn drop(&mut self) {
        let ours = std::fs::read_link(format!("/proc/{}/cwd", self.pid))
            .is_ok_and(|d| d == self.cwd || d.canonicalize().ok() == self.cwd.canonicalize().ok());
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn reel_serve_with_its_defaults_makes_a_chunked_minute_ready_and_playable() {
    let cwd = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let clip = minute_clip(work.path()).await;
    // The README's command, with only the port changed: no --data-dir, so ./reel-data.
    let addr = free_addr();
    let log = work.path().join("node.log");
    let mut node = ReelProcess::serve_in(cwd.path(), addr, log.clone());
    let base = format!("http://{addr}");
    wait_healthy(&base).await;
    let id = upload_and_check(&base, &base, &clip, work.path()).await;
    assert!(
        cwd.path()
            .join("reel-data/objects/videos")
            .join(&id)
            .is_dir(),
        "the default data directory is ./reel-data in the working directory\n{}",
        tail(&log)
    );
    // SIGTERM (as Ctrl-C): the node says it stops, and that it stopped.
    node.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("reel node node-1 stopping") && text.contains("reel node node-1 stopped"),
        "{}",
        tail(&log)
    );
    // The playback log holds the end of every session the stop closed: the records written
    // in the node's last moments reached the disk before the process ended.
    let jsonl = std::fs::read_to_string(cwd.path().join("reel-data/playback.jsonl")).unwrap();
    let (mut started, mut ended) = (Vec::new(), Vec::new());
    for line in jsonl.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let session = r["session_id"].as_str().unwrap().to_string();
        match r["event"].as_str() {
            Some("SESSION_START") => started.push(session),
            Some("SESSION_END") => ended.push(session),
            _ => {}
        }
    }
    assert!(!started.is_empty(), "the playback made a session");
    for s in &started {
        assert!(
            ended.contains(s),
            "session {s} has no SESSION_END in the playback log after the stop"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_repository_cluster_toml_makes_a_chunked_minute_ready_on_three_nodes() {
    let cwd = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let clip = minute_clip(work.path()).await;
    let urls = repository_cluster_toml(cwd.path());
    let cookie = "real-videos-test-cookie";
    let nodes: Vec<ReelProcess> = (1..=3)
        .map(|i| {
            let node = format!("node-{i}");
            ReelProcess::start_in(
                cwd.path(),
                &["serve", "--config", "cluster.toml", "--node", &node],
                &[("REEL_CLUSTER_COOKIE", cookie)],
                work.path().join(format!("{node}.log")),
            )
        })
        .collect();
    for url in &urls {
        wait_healthy(url).await;
        wait_until(
            &format!("{url} to see 3 live members"),
            Duration::from_secs(60),
            || {
                let url = format!("{url}/cluster");
                async move {
                    match reqwest::get(&url).await {
                        Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["live"] == 3),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }
    let id = upload_and_check(&urls[1], &urls[2], &clip, work.path()).await;
    // The file's relative paths: storage and node data beside the file.
    assert!(cwd
        .path()
        .join("reel-data/objects/videos")
        .join(&id)
        .is_dir());
    for i in 1..=3 {
        assert!(cwd.path().join(format!("reel-data/node-{i}")).is_dir());
    }
    // The chunk tasks (each encodes every rendition of its span) ran on at least two nodes.
    let (_, v) = get_json(&format!("{}/videos/{id}/events", urls[0])).await;
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let chunk_nodes: BTreeSet<String> = events
        .iter()
        .filter(|e| {
            e["kind"] == "task_started"
                && e["task"].as_str().is_some_and(|t| t.starts_with("chunk-"))
        })
        .filter_map(|e| e["detail"].as_str().map(str::to_string))
        .collect();
    assert!(
        chunk_nodes.len() >= 2,
        "chunks ran on {chunk_nodes:?}\n{}",
        (1..=3)
            .map(|i| tail(&work.path().join(format!("node-{i}.log"))))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    drop(nodes);
}

/// `kill -9` of `cluster-up` itself (no cleanup of its own runs) stops its nodes: each reads a
/// pipe only `cluster-up` held, sees it close, and stops as on SIGTERM, freeing its ports for
/// the next `cluster-up`. Before, they ran on, orphaned, holding the ports.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_of_cluster_up_stops_its_nodes() {
    let cwd = tempfile::tempdir().unwrap();
    let (urls, log, mut up) = cluster_up_in(cwd.path()).await;
    let nodes: Vec<KillIfLeft> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| KillIfLeft {
            pid: started_pid(&log, id),
            cwd: cwd.path().to_path_buf(),
        })
        .collect();
    up.kill9();
    for node in &nodes {
        let pid = node.pid;
        wait_until(
            &format!("node pid {pid} to stop after cluster-up's kill -9"),
            Duration::from_secs(30),
            || async move {
                // Gone, or a zombie its new parent has not reaped yet.
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
            },
        )
        .await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("standard input reached its end").count(),
        3,
        "each node says why it stopped: {}",
        tail(&log)
    );
    for url in &urls {
        assert!(
            reqwest::get(format!("{url}/health")).await.is_err(),
            "{url} no longer answers"
        );
    }
}

/// `reel cluster-up` on the repository's `cluster.toml`: a node killed with SIGKILL is started
/// again and answers, and the cluster is whole again (the README tells users to try this).
/// Stopping it stops every node side by side, a hung one included.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_up_starts_a_killed_node_again() {
    let cwd = tempfile::tempdir().unwrap();
    let (urls, log, mut up) = cluster_up_in(cwd.path()).await;
    // The child's PID, from cluster-up's own report.
    let pid = started_pid(&log, "node-2");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("node-2 started again", Duration::from_secs(60), || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("started node-2 again")
        }
    })
    .await;
    wait_healthy(&urls[1]).await;
    wait_until(
        "node-1 to see 3 live members",
        Duration::from_secs(60),
        || {
            let url = format!("{}/cluster", urls[0]);
            async move {
                match reqwest::get(&url).await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["live"] == 3),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    // A node that hangs (SIGSTOP) when the cluster is stopped does not hold the others up:
    // every node is told at once, and the hung one is killed once its drain and the margin
    // have passed (cluster.toml's shutdown_drain_seconds, 10 s, and 10 s).
    let node_1 = started_pid(&log, "node-1");
    let _hung = KillIfLeft {
        pid: node_1,
        cwd: cwd.path().to_path_buf(),
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node_1),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    assert!(
        up.terminate(),
        "cluster-up ends by itself on SIGTERM: {}",
        tail(&log)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let at = |line: &str| {
        text.find(line)
            .unwrap_or_else(|| panic!("no {line:?} in {}", tail(&log)))
    };
    let killed = at("node-1 had not stopped 20 s after SIGTERM");
    for other in ["stopped node-2", "stopped node-3"] {
        assert!(
            at(other) < killed,
            "{other} before node-1 was given up on: {}",
            tail(&log)
        );
    }
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(node_1), None).is_err(),
        "node-1 is gone"
    );
}
