//! The memory that upload bodies hold on their way to the store is bounded for the whole node
//! (`limits.upload_buffer_mib`, `storage::part_writer`): a body that finds it spent waits, then
//! gets `503` with `Retry-After` and nothing of it is stored; once room comes back, the same
//! upload sent again gets in.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// The node's free memory for upload bodies, bytes (`/health`).
async fn upload_room(base: &str) -> u64 {
    let (_, h) = get_json(&format!("{base}/health")).await;
    h["upload_buffer_free_bytes"].as_u64().expect("reported")
}

/// The answer to a request on `sock`: its status line and body, read until the body's
/// `Content-Length` has arrived.
async fn answer_on(sock: &mut tokio::net::TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), sock.read(&mut buf))
            .await
            .expect("the node answers")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return (
                    head.lines().next().unwrap_or("").to_string(),
                    body.to_string(),
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_upload_memory_budget_a_body_waits_then_gets_503_and_later_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Room for one part of the local store (1 MiB); a body waits at most 2 s for room.
    config.limits.upload_buffer_mib = 1;
    config.limits.body_idle_seconds = 2;
    let node = start(config).await;
    let base = node.url();
    let full = upload_room(&base).await;
    assert_eq!(full, 1024 * 1024);
    // Room is taken for the bytes a body holds (its part being filled, its parts being
    // written): a PUT that has sent 1,000 bytes short of a whole part, and goes on slowly,
    // holds all of it.
    let long = std::fs::read(clip("long")).unwrap();
    let first = 1024 * 1024 - 1000;
    let mut held = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "PUT /upload HTTP/1.1\r\nHost: reel\r\nContent-Length: {}\r\n\r\n",
        long.len()
    );
    held.write_all(head.as_bytes()).await.unwrap();
    held.write_all(&long[..first]).await.unwrap();
    wait_until(
        "the held body takes the room",
        Duration::from_secs(30),
        || {
            let base = base.clone();
            async move { upload_room(&base).await == 0 }
        },
    )
    .await;
    // It goes on at a byte every half second, as a slow client does (a body silent for
    // `body_idle_seconds` would be cut, and its room given back), never reaching the part's end.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let trickle = {
        let long = long.clone();
        tokio::spawn(async move {
            let mut stopped = stopped;
            let mut sent = first;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        held.write_all(&long[sent..sent + 1]).await.unwrap();
                        sent += 1;
                    }
                }
            }
            (held, sent)
        })
    };

    // A second upload by PUT waits for room, then is told to come back; nothing is stored.
    let bytes = std::fs::read(clip("video")).unwrap();
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{base}/upload"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: Value = r.json().await.unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("limits.upload_buffer_mib"), "{msg}");
    assert!(
        msg.contains("nothing of this request's body was stored"),
        "{msg}"
    );
    // By tus: the PATCH gets the same answer, and the upload's offset stays where it was.
    let url = tus_create(&base, bytes.len()).await.unwrap();
    let r = tus_patch(&url, 0, bytes.clone()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(tus_head(&url).await.headers()["upload-offset"], "0");

    // The held body ends: its upload is taken, and the room comes back whole.
    stop.send(()).unwrap();
    let (mut held, sent) = trickle.await.unwrap();
    assert!(
        sent < 1024 * 1024,
        "the trickle stayed inside the first part"
    );
    held.write_all(&long[sent..]).await.unwrap();
    let (status, body) = answer_on(&mut held).await;
    assert!(status.starts_with("HTTP/1.1 202"), "{status} {body}");
    assert_eq!(upload_room(&base).await, full);

    // Both refused uploads, sent again, get in: the PUT makes its video, the tus upload ends
    // on the same one.
    let (status, v) = upload(&base, &clip("video")).await;
    assert_eq!(status, 202);
    let id = v["video_id"].as_str().unwrap().to_string();
    let r = tus_patch(&url, 0, bytes.clone()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    assert_eq!(upload_room(&base).await, full);
    let staged = files_under(&dir.path().join("objects/uploads/direct"));
    assert!(staged.is_empty(), "no body left staged: {staged:?}");
    node.stop().await;
}
