//! Shared by the crash-injection demos: make a clip, start a node, upload, wait, print events.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Generate a 20 s 640x360 test clip with audio (ffmpeg's testsrc2 and a sine tone).
pub fn make_clip(dir: &Path) -> PathBuf {
    let path = dir.join("demo.mp4");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:sample_rate=48000",
            "-t",
            "20",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg is needed: run scripts/setup");
    path
}

/// A small, fast configuration for a node under `dir`.
pub fn config(dir: &Path, workers: usize) -> reel::config::Config {
    let mut c = reel::config::Config::single_node(dir, "127.0.0.1:0".parse().unwrap());
    c.workers = workers;
    c.processing.preset = "ultrafast".into();
    c.processing.segment_seconds = 2;
    c.processing.backoff_initial_ms = 200;
    c
}

/// Start a node in this process on a free loopback port.
pub async fn start(config: reel::config::Config) -> reel::RunningNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    reel::spawn(config, listener).await.expect("node starts")
}

/// PUT the file to `/upload`; returns the video id.
pub async fn upload(base: &str, file: &Path) -> String {
    let body = tokio::fs::read(file).await.unwrap();
    let v: Value = reqwest::Client::new()
        .put(format!("{base}/upload"))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("uploaded: {v}");
    v["video_id"].as_str().unwrap().to_string()
}

/// Poll the video until ready or failed (at most two minutes).
pub async fn wait_done(base: &str, id: &str) -> Value {
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/videos/{id}")).await {
            if let Ok(v) = r.json::<Value>().await {
                if matches!(v["state"].as_str(), Some("ready" | "failed")) {
                    return v;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not done in two minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Print the video's event log as a timeline.
pub async fn print_events(base: &str, id: &str) {
    let v: Value = reqwest::get(format!("{base}/videos/{id}/events"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("\nevent log of {id}:");
    for e in v["events"].as_array().into_iter().flatten() {
        let field = |k: &str| {
            e[k].as_str()
                .map(str::to_string)
                .or_else(|| e[k].as_u64().map(|n| n.to_string()))
        };
        println!(
            "  {} {:8} {:22} {:6} {:3} {}",
            e["ts"].as_str().unwrap_or(""),
            e["node"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            field("task").unwrap_or_default(),
            field("attempt").unwrap_or_default(),
            field("detail").unwrap_or_default(),
        );
    }
}
