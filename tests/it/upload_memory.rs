//! The memory that upload bodies hold on their way to the store is bounded for the whole node
//! (`limits.upload_buffer_mib`, `storage::part_writer`): a body that finds it spent waits, then
//! gets `503` with `Retry-After` and nothing of it is stored; once room comes back, the same
//! upload sent again gets in. On the local store a slow body holds at most a second of its
//! bytes, so slow clients cannot keep the others out; on S3, whose parts must be whole, a slow
//! body keeps its part.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::s3::SeaweedFs;

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

/// A `PUT /upload` of `body` that has sent `body[..first]` and goes on at a byte every half
/// second, as a slow client does: never silent for `body_idle_seconds`, so never cut.
struct Held {
    stop: tokio::sync::oneshot::Sender<()>,
    trickle: tokio::task::JoinHandle<(TcpStream, usize)>,
}

impl Held {
    async fn start(addr: std::net::SocketAddr, body: &[u8], first: usize) -> Self {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /upload HTTP/1.1\r\nHost: reel\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&body[..first]).await.unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let body = body.to_vec();
        let trickle = tokio::spawn(async move {
            let mut sent = first;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        sock.write_all(&body[sent..sent + 1]).await.unwrap();
                        sent += 1;
                    }
                }
            }
            (sock, sent)
        });
        Self { stop, trickle }
    }

    /// Stop the trickle: the connection, and how much of the body it has sent.
    async fn stop(self) -> (TcpStream, usize) {
        self.stop.send(()).unwrap();
        self.trickle.await.unwrap()
    }
}

/// Wait (up to 30 s) until the node's `/health` answer satisfies `cond`.
async fn wait_for_health(base: &str, what: &str, cond: impl Fn(&Value) -> bool + Copy) {
    wait_until(what, Duration::from_secs(30), || async move {
        let (_, h) = get_json(&format!("{base}/health")).await;
        cond(&h)
    })
    .await;
}

/// A node on SeaweedFS bucket `bucket` with the least memory S3 allows for upload bodies (two
/// 8 MiB parts), bodies waiting at most 2 s for room, and `spool_mib` of spool (`None`: the
/// default). `None` when the S3 tests are skipped.
async fn s3_node(
    bucket: &str,
    spool_mib: Option<u64>,
) -> Option<(SeaweedFs, tempfile::TempDir, reel::RunningNode)> {
    let weed = SeaweedFs::start(&[bucket]).await?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage = weed.location(bucket);
    config.limits.upload_buffer_mib = 16;
    config.limits.body_idle_seconds = 2;
    if let Some(mib) = spool_mib {
        config.limits.upload_spool_mib = mib;
    }
    let node = start(config).await;
    Some((weed, dir, node))
}

/// Two `PUT` bodies of 9 MiB (a clip, then zeros) that each sent 1,000 bytes short of an S3
/// part, and go on slowly; and the body they send.
async fn two_slow_bodies(addr: std::net::SocketAddr) -> ([Held; 2], Vec<u8>) {
    let mut body = std::fs::read(clip("long")).unwrap();
    body.resize(9 * 1024 * 1024, 0);
    let first = 8 * 1024 * 1024 - 1000;
    let held = [
        Held::start(addr, &body, first).await,
        Held::start(addr, &body, first).await,
    ];
    (held, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_local_store_a_slow_body_gives_its_room_back_and_keeps_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Room for one part of the local store (1 MiB); a body waits at most 2 s for room.
    config.limits.upload_buffer_mib = 1;
    config.limits.body_idle_seconds = 2;
    let node = start(config).await;
    let base = node.url();
    let full = upload_room(&base).await;
    assert_eq!(full, 1024 * 1024);
    // A body that sent 1,000 bytes short of a whole part and goes on slowly: its part goes to
    // the store a second after its first byte, and its room comes back while it goes on (a
    // trickled byte holds a KiB until its own part goes).
    let long = std::fs::read(clip("long")).unwrap();
    let held = Held::start(node.addr, &long, 1024 * 1024 - 1000).await;
    wait_for_health(&base, "the slow body's room comes back", move |h| {
        h["upload_buffer_free_bytes"].as_u64() >= Some(full - 1024)
    })
    .await;
    // So other uploads get in while it goes on, by PUT and by tus.
    let (status, v) = upload(&base, &clip("video")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let bytes = std::fs::read(clip("video")).unwrap();
    let url = tus_create(&base, bytes.len()).await.unwrap();
    let r = tus_patch(&url, 0, bytes).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    // The slow body ends: its upload is taken whole and in order, and the room is whole again.
    let (mut held, sent) = held.stop().await;
    held.write_all(&long[sent..]).await.unwrap();
    let (status, body) = answer_on(&mut held).await;
    assert!(status.starts_with("HTTP/1.1 202"), "{status} {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let slow = v["video_id"].as_str().unwrap();
    assert!(
        stored_source(dir.path(), slow) == long,
        "the slow body's source is stored as sent"
    );
    assert_eq!(upload_room(&base).await, full);
    let staged = files_under(&dir.path().join("objects/uploads/direct"));
    assert!(staged.is_empty(), "no body left staged: {staged:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_upload_memory_budget_a_body_waits_then_gets_503_and_later_gets_in() {
    // On S3 without a spool, where a slow body keeps its part (parts must be whole), so slow
    // bodies can spend the budget.
    let Some((weed, _dir, node)) = s3_node("reel-budget", Some(0)).await else {
        return;
    };
    let base = node.url();
    let full = upload_room(&base).await;
    assert_eq!(full, 16 * 1024 * 1024);
    // Two bodies that each sent 1,000 bytes short of a part, and go on slowly, hold it all.
    let (held, _) = two_slow_bodies(node.addr).await;
    wait_for_health(&base, "the held bodies take the room", |h| {
        h["upload_buffer_free_bytes"] == 0
    })
    .await;

    // A third upload by PUT waits for room, then is told to come back; nothing is stored.
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

    // The held bodies' clients go away: nothing of theirs is stored, and the room comes back.
    for h in held {
        drop(h.stop().await);
    }
    wait_for_health(&base, "the room comes back", |h| {
        h["upload_buffer_free_bytes"] == 16 * 1024 * 1024
    })
    .await;

    // Both refused uploads, sent again, get in: the PUT makes its video, the tus upload ends
    // on the same one.
    let (status, v) = upload(&base, &clip("video")).await;
    assert_eq!(status, 202);
    let id = v["video_id"].as_str().unwrap().to_string();
    let r = tus_patch(&url, 0, bytes.clone()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    assert_eq!(upload_room(&base).await, full);
    let staged = weed
        .storage("reel-budget")
        .list(reel::storage::keys::DIRECT_UPLOADS)
        .await
        .unwrap();
    assert!(staged.is_empty(), "no body left staged: {staged:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_s3_slow_bodies_move_their_parts_to_disk_and_keep_nobody_out() {
    let Some((weed, _dir, node)) = s3_node("reel-spool", None).await else {
        return;
    };
    let base = node.url();
    let (_, h) = get_json(&format!("{base}/health")).await;
    let spool_full = h["upload_spool_free_bytes"].as_u64().expect("reported");
    assert_eq!(spool_full, 4096 * 1024 * 1024, "the default");
    // The same two slow bodies as above: a second after their parts' first bytes, the parts
    // move to disk (a part's room each), and the memory comes back while they go on.
    let (held, body) = two_slow_bodies(node.addr).await;
    wait_for_health(&base, "the slow bodies' parts move to disk", move |h| {
        h["upload_buffer_free_bytes"] == 16 * 1024 * 1024
            && h["upload_spool_free_bytes"] == spool_full - 2 * 8 * 1024 * 1024
    })
    .await;
    // So another upload gets in while they go on.
    let (status, v) = upload(&base, &clip("video")).await;
    assert_eq!(status, 202, "{v}");
    // One slow body ends: its part is read back from disk and its source is stored as sent.
    // The other's client goes away: nothing of it is stored. The room comes back whole.
    let [one, two] = held;
    let (mut one, sent) = one.stop().await;
    drop(two.stop().await);
    one.write_all(&body[sent..]).await.unwrap();
    let (status, answer) = answer_on(&mut one).await;
    assert!(status.starts_with("HTTP/1.1 202"), "{status} {answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let id = v["video_id"].as_str().unwrap();
    let stored = weed
        .storage("reel-spool")
        .get(&reel::storage::keys::source(id))
        .await
        .unwrap()
        .expect("the source is stored");
    assert!(stored.bytes == body, "stored whole and in order");
    wait_for_health(&base, "the room comes back", move |h| {
        h["upload_buffer_free_bytes"] == 16 * 1024 * 1024
            && h["upload_spool_free_bytes"] == spool_full
    })
    .await;
    node.stop().await;
}
