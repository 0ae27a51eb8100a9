//! Third-party players against a real node (seed rule 6 and 9): hls.js in headless Chromium
//! under a fast, slow, fast network must switch down and back up, and the server's playback
//! log for that session alone must show the same switches; VLC (as `nobody`) and ffmpeg play to
//! the end through a session served by one node.
//!
//! Needs `scripts/setup --test` (chromium, vlc, `npm ci` in `tests/players`). Every player run has a
//! hard deadline and is killed when it passes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reel::config::RungConfig;
use reel::storage::playback::PlaybackEvent;
use reel::streaming::timeline::Timeline;
use serde_json::Value;

use crate::helpers::*;
use crate::sessions::{get, session_records, started_sessions};

fn players_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/players")
}

/// A node with a two-rung ladder far apart in bitrate (about 1.6 Mbit/s and 0.15 Mbit/s) and a
/// ready 60 s video on it.
async fn abr_node() -> (tempfile::TempDir, reel::RunningNode, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.processing.ladder = vec![
        RungConfig {
            name: "360p".into(),
            height: 360,
            video_kbps: 1500,
            audio_kbps: 64,
        },
        RungConfig {
            name: "144p".into(),
            height: 144,
            video_kbps: 120,
            audio_kbps: 32,
        },
    ];
    let node = start(config).await;
    let base = node.url();
    let (status, v) = upload(&base, &clip("abr")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, Duration::from_secs(240)).await;
    assert_eq!(v["state"], "ready", "{v}");
    (dir, node, base, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn hlsjs_switches_down_and_up_and_the_server_logs_prove_it() {
    let (dir, node, base, id) = abr_node().await;
    let master = format!("{base}/videos/{id}/master.m3u8");
    let run = tokio::process::Command::new("node")
        .arg(players_dir().join("hlsjs.mjs"))
        .args([&master, "--slow-kbps", "400", "--timeout-s", "170"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the hls.js run ends within 180 s")
        .expect("node runs (scripts/setup --test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success() && report["ok"] == true,
        "hls.js did not switch down and up: {report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the player says: the level of each loaded fragment, as rendition names.
    let levels = report["levels"].as_array().unwrap();
    let name_of = |level: i64| -> String {
        let url = levels
            .iter()
            .find(|l| l["index"] == level)
            .and_then(|l| l["url"].as_str())
            .unwrap_or("");
        url.rsplit('/').nth(1).unwrap_or("").to_string()
    };
    let mut player: Vec<String> = Vec::new();
    for f in report["frags"].as_array().unwrap() {
        let n = name_of(f["level"].as_i64().unwrap());
        if player.last() != Some(&n) {
            player.push(n);
        }
    }
    assert!(
        contains_in_order(&player, &["144p", "360p", "144p", "360p"]),
        "player renditions: {player:?}"
    );

    // What the server's logs alone say about that session.
    let session = report["session"]
        .as_str()
        .expect("session id in level URLs");
    let data: PathBuf = dir.path().into();
    let recs = session_records(&node, &data, session).await;
    let t = Timeline::from_records(session, recs);
    let text = t.render_text();
    let sw = t.switches();
    let downs: Vec<_> = sw.iter().filter(|s| !s.is_up()).collect();
    let ups: Vec<_> = sw.iter().filter(|s| s.is_up()).collect();
    assert!(!downs.is_empty() && !ups.is_empty(), "{text}");
    let first_down = downs[0];
    assert!(
        ups.iter()
            .any(|u| u.ts_ms > first_down.ts_ms && u.to.name == "360p"),
        "the server saw a switch up after the switch down: {text}"
    );
    assert_eq!(first_down.from.name, "360p");
    assert_eq!(first_down.to.name, "144p");
    let mut served: Vec<String> = Vec::new();
    for r in t.serves() {
        let n = r.rendition.as_ref().unwrap().name.clone();
        if served.last() != Some(&n) {
            served.push(n);
        }
    }
    assert!(
        contains_in_order(&served, &["144p", "360p", "144p", "360p"]),
        "server renditions: {served:?}\n{text}"
    );
    assert_eq!(t.serving_nodes(), vec![node.node.ctx.node_id.clone()]);
    let (hits, misses) = t.hits_and_misses();
    assert!(hits > 0, "read-ahead produced cache hits: {text}");
    // A 360p segment (about 375 kB) leaves the node from its stored file (sendfile), and what
    // arrives is that file: whole, and a range of it.
    let rdir = rendition_dir(&base, &id, "360p").await;
    let stored = std::fs::read(
        dir.path()
            .join(format!("objects/videos/{id}/{rdir}/00001.m4s")),
    )
    .unwrap();
    assert!(stored.len() >= 64 * 1024, "{} bytes", stored.len());
    let from_files = || async {
        let (_, h) = get_json(&format!("{base}/health")).await;
        h["bytes_sent_from_files"].as_u64().unwrap()
    };
    let before = from_files().await;
    let seg = format!("{base}/videos/{id}/s/{session}/360p/00001.m4s");
    let whole = get(&seg, &[]).await.bytes().await.unwrap();
    assert!(whole[..] == stored[..], "the stored segment, byte for byte");
    // Other tests' nodes in this process only add to the count.
    assert!(from_files().await - before >= stored.len() as u64);
    let part = get(&seg, &[("range", "bytes=1000-70999")]).await;
    assert_eq!(part.status(), 206);
    assert!(part.bytes().await.unwrap()[..] == stored[1000..71000]);

    // Print the proof (visible with --nocapture) and keep a chart beside the test output.
    println!("{text}\n(hits {hits}, misses {misses})");
    let _ = std::fs::write(
        std::env::temp_dir().join(format!("reel-hlsjs-{session}.svg")),
        t.render_svg(),
    );
    node.stop().await;
}

/// Whether `want` occurs in `seq` as a subsequence.
fn contains_in_order(seq: &[String], want: &[&str]) -> bool {
    let mut it = seq.iter();
    want.iter().all(|w| it.any(|s| s == w))
}

#[tokio::test(flavor = "multi_thread")]
async fn vlc_as_nobody_plays_a_session_to_the_end() {
    let (dir, node, base, id) = ready_av_node().await;
    let home = tempfile::tempdir().unwrap();
    std::process::Command::new("chown")
        .args(["nobody"])
        .arg(home.path())
        .status()
        .unwrap();
    let master = format!("{base}/videos/{id}/master.m3u8");
    let run = tokio::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "env"])
        .arg(format!("HOME={}", home.path().display()))
        .args([
            "cvlc",
            "--intf",
            "dummy",
            "--vout",
            "dummy",
            "--aout",
            "dummy",
            "--play-and-exit",
            "--rate",
            "16",
            "-vv",
            &master,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("VLC ends within 90 s")
        .expect("vlc runs (scripts/setup --test installs it)");
    let log = String::from_utf8_lossy(&out.stderr);
    let data: PathBuf = dir.path().into();
    let sessions = started_sessions(&node, &data).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}\n{log}");
    let recs = session_records(&node, &data, &sessions[0]).await;
    let mut served: Vec<usize> = recs
        .iter()
        .filter(|r| r.event == PlaybackEvent::Serve && r.result.as_deref() == Some("ok"))
        .map(|r| {
            assert_eq!(r.node_id, node.node.ctx.node_id);
            r.segment.unwrap()
        })
        .collect();
    served.sort();
    served.dedup();
    assert_eq!(served, vec![0, 1, 2], "every segment reached VLC\n{log}");
    assert!(
        log.contains(&format!("/s/{}/", sessions[0])),
        "VLC stayed on the session paths"
    );
    node.stop().await;
}

async fn ready_av_node() -> (tempfile::TempDir, reel::RunningNode, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let (status, v) = upload(&base, &clip("av")).await;
    assert!(status == 202 || status == 200, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    (dir, node, base, id)
}
