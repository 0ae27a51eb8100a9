//! Bad input gets a clear error and loses nothing: never a panic, never a retry, never a
//! half-visible video.

use crate::helpers::*;

/// Upload clip `kind` to the node at `base` and wait for it to fail with a reason containing
/// `reason_contains`, its master playlist refused with `409`; returns its id and events.
async fn upload_and_fail(
    base: &str,
    kind: &str,
    reason_contains: &str,
) -> (String, Vec<serde_json::Value>) {
    let (status, v) = upload(base, &clip(kind)).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "failed", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains(reason_contains), "{kind}: {error}");
    let resp = reqwest::get(format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");
    let events = event_kinds(base, &id).await;
    (id, events)
}

async fn fails_with(kind: &str, reason_contains: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let (id, events) = upload_and_fail(&base, kind, reason_contains).await;
    assert_eq!(
        count(&events, "task_dispatched"),
        0,
        "never transcoded: {events:?}"
    );
    assert_eq!(count(&events, "job_failed"), 1, "{events:?}");
    // Uploading it again does not retry it.
    let (status, again) = upload(&base, &clip(kind)).await;
    assert_eq!((status, again["state"].as_str()), (200, Some("failed")));
    assert_eq!(count(&event_kinds(&base, &id).await, "job_started"), 1);
    node.stop().await;
}

/// A text file sent as `curl -T` sends it (`PUT`), or as a form's `file` field, is refused
/// with `415` at once, whether it is longer than the 4 KiB sniffed as it arrives or shorter
/// (judged whole); nothing is stored and no video record is made.
#[tokio::test(flavor = "multi_thread")]
async fn a_text_file_is_refused_at_once_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let client = reqwest::Client::new();
    let long = std::fs::read(clip("text")).unwrap();
    assert!(long.len() > 4096, "longer than the sniff window");
    // 40 MB of text in 64 KiB pieces: refused after its first, not after the whole body.
    let piece = bytes::Bytes::from("my holiday video, honest\n".repeat(2621));
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = futures::stream::iter(std::iter::repeat_n(piece, 640).map(move |p| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(p)
    }));
    let bodies: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "PUT, 7.5 kB",
            client.put(format!("{base}/upload")).body(long.clone()),
        ),
        (
            "PUT, 38 bytes",
            client
                .put(format!("{base}/upload"))
                .body("my holiday video, honest\n"),
        ),
        (
            "PUT, 40 MB streamed",
            client
                .put(format!("{base}/upload"))
                .body(reqwest::Body::wrap_stream(endless)),
        ),
        (
            "POST multipart",
            client
                .post(format!("{base}/upload"))
                .multipart(reqwest::multipart::Form::new().part(
                    "file",
                    reqwest::multipart::Part::bytes(long).file_name("notes.txt"),
                )),
        ),
    ];
    let mut pulled_at_answer = None;
    for (how, req) in bodies {
        // The node answers while the rest of a long body is still being sent, and reads on
        // (`reel::http::linger`), so the client reads the answer instead of a cut connection.
        let resp = req.send().await.unwrap_or_else(|e| panic!("{how}: {e}"));
        if how.contains("streamed") {
            pulled_at_answer = Some(pulled.load(std::sync::atomic::Ordering::Relaxed));
        }
        assert_eq!(resp.status(), 415, "{how}");
        let v: serde_json::Value = resp.json().await.unwrap();
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("text file, not a video") && e.contains("nothing was stored"),
            "{how}: {e}"
        );
    }
    let pulled = pulled_at_answer.unwrap();
    eprintln!("the 40 MB text body was answered after {pulled} of its 640 pieces of 64 KiB");
    assert!(
        pulled < 320,
        "the node read {pulled} of 640 pieces before refusing"
    );
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 0, "{list}");
    let objects = dir.path().join("objects");
    assert_eq!(files_under(&objects.join("sources")), Vec::<String>::new());
    assert_eq!(files_under(&objects.join("uploads")), Vec::<String>::new());
    node.stop().await;
}

/// A client that sends a refused body to its end before it reads the answer (the worst case
/// for an early `415`) reads the answer: the node reads the rest of the body and throws it
/// away (`reel::http::linger`) instead of closing on unread bytes, which resets the
/// connection under the client's writes (`curl -T` of a large text file got "Send failure:
/// Broken pipe" and no status, in a third of tries).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_a_refused_body_reads_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let addr = node.url().trim_start_matches("http://").to_string();
    let piece = "my holiday video, honest\n".repeat(2621).into_bytes();
    let pieces = 320; // 20 MB: far more than both sockets' buffers hold
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        piece.len() * pieces
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for i in 0..pieces {
        if let Err(e) = stream.write_all(&piece).await {
            panic!("the node cut the connection under piece {i} of {pieces}: {e}");
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        // Until the answer's body (a JSON object) is whole, or the node closes.
        while !answer.ends_with(b"}") {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 30 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains("text file, not a video"), "{answer}");
    let (_, list) = get_json(&format!("{}/videos", node.url())).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 0, "{list}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_bytes_fail_with_a_reason() {
    fails_with("random", "not a video").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_only_fails_with_a_reason() {
    fails_with("audio", "only audio (aac)").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_mp4_with_a_whole_header_fails_with_a_reason() {
    fails_with("truncated", "truncated").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_mp4_with_its_index_at_the_end_is_called_truncated() {
    fails_with("truncated-moov-last", "the file looks truncated").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mp4_with_a_zeroed_middle_fails_naming_the_damaged_span() {
    // Published, it played 132 of 200 frames with a 2.7 s freeze.
    fails_with("zeroed-middle", "the file is damaged between 2.").await;
}

/// The same damaged file in 2 s chunks: decoded only by its chunk tasks (issue 11, P2), the
/// frames they lost are found before any rendition is packaged, a whole decode names the span,
/// and the chunks already stored are removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_source_with_a_zeroed_middle_fails_before_packaging() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.processing.chunk_seconds = 2;
    let node = start(config).await;
    let base = node.url();
    let (id, events) =
        upload_and_fail(&base, "zeroed-middle", "the file is damaged between 2.").await;
    let dispatched = event_fields(&events, "task_dispatched", "task");
    assert!(
        dispatched
            .iter()
            .filter(|t| t.starts_with("chunk-"))
            .count()
            >= 3,
        "validation left the decoding to the chunks: {dispatched:?}"
    );
    assert!(
        dispatched
            .iter()
            .all(|t| t.starts_with("chunk-") || t.starts_with("audio-")),
        "nothing was packaged: {dispatched:?}"
    );
    let check = events
        .iter()
        .find(|e| e["kind"] == "damage_checked")
        .expect("the damage check ran");
    assert_eq!(check["outcome"], "invalid", "{check}");
    // Chunks and frame times (an audio task that was finishing when the video failed may
    // still store its file after the sweep).
    let work = dir.path().join("objects").join("work").join(&id);
    let left = || {
        ["frames", "240p", "180p"]
            .iter()
            .filter_map(|d| std::fs::read_dir(work.join(d)).ok())
            .flatten()
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while left() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} intermediates left behind in {}",
            left(),
            work.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_upload_unknown_and_hostile_ids_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let resp = reqwest::Client::new()
        .put(format!("{base}/upload"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("empty"), "{v}");
    let (status, v) = get_json(&format!("{base}/videos/0123456789abcdef0123456789abcdef")).await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].is_string());
    for hostile in [
        "..%2F..%2Fetc%2Fpasswd",
        "ABC",
        "0123456789abcdef0123456789abcdef%2F..",
    ] {
        let (status, v) = get_json(&format!("{base}/videos/{hostile}")).await;
        assert_eq!(status, 404, "{hostile}: {v}");
        let (status, _) = get_json(&format!("{base}/videos/{hostile}/master.m3u8")).await;
        assert_eq!(status, 404, "{hostile}");
    }
    let (status, _) = get_json(&format!(
        "{base}/videos/0123456789abcdef0123456789abcdef/240p/record.json"
    ))
    .await;
    assert_eq!(status, 404, "only playlists and segments are served");
    let (status, v) = get_json(&format!("{base}/nope")).await;
    assert_eq!((status, v["error"].as_str()), (404, Some("no such route")));
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(
        list["videos"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    node.stop().await;
}
