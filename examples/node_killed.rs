//! Crash injection: a whole node is killed (SIGKILL) mid-job, in a three-node cluster.
//!
//! `cargo build && cargo run --example node_killed`
//!
//! Starts three `reel serve` processes (the binary built next to this example) from a
//! generated cluster.toml on free loopback ports, uploads a clip, kills the video's home node
//! with SIGKILL once a task runs, and shows the survivors finishing the video: the ring moves
//! the video to a new home, which claims a newer lease and resumes from the stored outputs.
//! Then restarts the killed node and shows it rejoin.

#[path = "common/mod.rs"]
mod common;

use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

fn reel_binary() -> std::path::PathBuf {
    // target/{profile}/examples/node_killed -> target/{profile}/reel
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).unwrap().join("reel");
    assert!(
        bin.exists(),
        "build the binary first: cargo build (looked for {bin:?})"
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(bin: &std::path::Path, config: &std::path::Path, node: &str) -> Child {
    Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .args(["--node", node])
        .env("REEL_CLUSTER_COOKIE", "demo-cookie")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

async fn get(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

async fn wait_for<F: Fn(&Value) -> bool>(url: &str, what: &str, ok: F) -> Value {
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = get(url).await {
            if ok(&v) {
                return v;
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let bin = reel_binary();
    let dir = tempfile::tempdir().unwrap();
    let clip = common::make_clip(dir.path());
    let mut toml = String::from(
        "storage = \"local:objects\"\n[cluster]\nheartbeat_ms = 300\nreconcile_seconds = 2\n\
         [processing]\npreset = \"ultrafast\"\nsegment_seconds = 2\n",
    );
    let mut http = Vec::new();
    for i in 1..=3 {
        let (h, c) = (free_port(), free_port());
        toml += &format!("[[node]]\nid = \"node-{i}\"\nhttp = \"127.0.0.1:{h}\"\ncluster = \"127.0.0.1:{c}\"\nworkers = 1\n");
        http.push(format!("http://127.0.0.1:{h}"));
    }
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, toml).unwrap();
    let mut nodes: Vec<Child> = (1..=3)
        .map(|i| spawn(&bin, &config, &format!("node-{i}")))
        .collect();
    for url in &http {
        wait_for(&format!("{url}/cluster"), "three live members", |v| {
            v["live"] == 3
        })
        .await;
    }
    println!("three nodes are up");
    let id = common::upload(&http[0], &clip).await;
    let status = get(&format!("{}/videos/{id}", http[0])).await.unwrap();
    let home = status["home_node"].as_str().unwrap().to_string();
    let k: usize = home.trim_start_matches("node-").parse().unwrap();
    let survivor = &http[if k == 1 { 1 } else { 0 }];
    wait_for(
        &format!("{survivor}/videos/{id}/events"),
        "a running task",
        |v| {
            v["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["kind"] == "task_started")
        },
    )
    .await;
    println!("killing {home} (SIGKILL), the video's home node, mid-job");
    nodes[k - 1].kill().unwrap();
    nodes[k - 1].wait().unwrap();
    let v = common::wait_done(survivor, &id).await;
    common::print_events(survivor, &id).await;
    println!("\nresult: {} ; new home {}", v["state"], v["home_node"]);
    println!("restarting {home}");
    nodes[k - 1] = spawn(&bin, &config, &home);
    let c = wait_for(&format!("{}/cluster", http[k - 1]), "rejoin", |v| {
        v["live"] == 3
    })
    .await;
    println!("{home} rejoined: {} live members", c["live"]);
    for mut n in nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
}
