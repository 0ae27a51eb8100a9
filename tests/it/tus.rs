//! tus 1.0.0 at `/files/`: creation, PATCH in chunks with checksums, resume after a node restart,
//! the lost final response, a PATCH cut mid-way, early rejection, dedupe before transfer,
//! expiry, and one test per malformed header. Real nodes on loopback ports.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use reqwest::{Client, Method};
use sha1::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const OCTET: &str = "application/offset+octet-stream";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// POST /files/ with `Upload-Length` and metadata; returns the response.
async fn create(base: &str, len: u64, metadata: &[(&str, &str)]) -> reqwest::Response {
    let meta: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{k} {}", b64(v.as_bytes())))
        .collect();
    let mut req = Client::new()
        .post(format!("{base}/files/"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len.to_string());
    if !meta.is_empty() {
        req = req.header("Upload-Metadata", meta.join(","));
    }
    req.send().await.unwrap()
}

/// Create and return the upload URL.
async fn create_url(base: &str, len: u64, metadata: &[(&str, &str)]) -> String {
    let r = create(base, len, metadata).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with(base), "absolute location {loc}");
    loc
}

async fn patch(url: &str, offset: u64, bytes: Vec<u8>) -> reqwest::Response {
    Client::new()
        .patch(url)
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", OCTET)
        .header("Upload-Offset", offset.to_string())
        .header(
            "Upload-Checksum",
            format!("sha1 {}", b64(&sha1::Sha1::digest(&bytes))),
        )
        .body(bytes)
        .send()
        .await
        .unwrap()
}

fn num(r: &reqwest::Response, name: &str) -> u64 {
    r.headers()[name].to_str().unwrap().parse().unwrap()
}

/// Objects under `uploads/` other than `uploads/direct/` in a node's local store, as
/// `{upload_id}/{name}`.
fn stored_upload_objects(dir: &Path) -> Vec<String> {
    files_under(&dir.join("objects/uploads"))
        .into_iter()
        // LocalFileSystem's lock for swapping info.json: not an object reel stores.
        .filter(|f| !f.starts_with("direct/") && !f.ends_with(".lock"))
        .collect()
}

/// Send a PATCH by hand: the head and the first `send` bytes of a `declared`-byte body, then
/// either close the connection (`close`) or hand back the open stream.
async fn raw_patch(url: &str, offset: u64, declared: usize, body: &[u8]) -> tokio::net::TcpStream {
    let u = url::Url::parse(url).unwrap();
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nContent-Type: {OCTET}\r\nUpload-Offset: {offset}\r\nContent-Length: {declared}\r\n\r\n",
        u.path(),
        u.host_str().unwrap()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// The status code of the answer on a connection [`raw_patch`] opened (waits for it).
async fn raw_status(s: &mut tokio::net::TcpStream) -> u16 {
    let mut answer = vec![0u8; 1024];
    let n = s.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

/// Poll HEAD until `Upload-Offset` is `want` (bounded).
async fn wait_offset(url: &str, want: u64) -> reqwest::Response {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = tus_head(url).await;
        if r.status() == 200 && num(&r, "upload-offset") == want {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "offset never reached {want}: {:?}",
            r.headers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn options_advertises_version_extensions_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let r = Client::new()
        .request(Method::OPTIONS, format!("{}/files/", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(h["tus-resumable"], "1.0.0");
    let ext = h["tus-extension"].to_str().unwrap();
    for e in [
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} in {ext}");
    }
    assert!(h["tus-checksum-algorithm"]
        .to_str()
        .unwrap()
        .contains("sha1"));
    assert_eq!(h["tus-max-size"], (20u64 << 30).to_string().as_str());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_upload_with_checksums_becomes_a_ready_video_with_intact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = std::fs::read(clip("av")).unwrap();
    let len = bytes.len() as u64;
    let url = create_url(
        &base,
        len,
        &[("filename", "holiday.mp4"), ("filetype", "video/mp4")],
    )
    .await;
    let r = tus_head(&url).await;
    assert_eq!(
        (num(&r, "upload-offset"), num(&r, "upload-length")),
        (0, len)
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["upload-metadata"]
        .to_str()
        .unwrap()
        .contains("filename"));
    assert!(httpdate::parse_http_date(r.headers()["upload-expires"].to_str().unwrap()).is_ok());
    let cuts = [0, 1000, bytes.len() / 2, bytes.len()];
    let mut video = None;
    for w in cuts.windows(2) {
        let r = patch(&url, w[0] as u64, bytes[w[0]..w[1]].to_vec()).await;
        assert_eq!(r.status(), 204, "{:?}", r.text().await);
        assert_eq!(num(&r, "upload-offset"), w[1] as u64);
        video = r
            .headers()
            .get("reel-video-id")
            .map(|v| v.to_str().unwrap().to_string());
    }
    let id = video.expect("the last PATCH names the video");
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["filename"], "holiday.mp4");
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), &id)),
        sha256_hex(&bytes)
    );
    // The finished upload remembers its answer; its parts are gone.
    let r = tus_head(&url).await;
    assert_eq!(num(&r, "upload-offset"), len);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    assert_eq!(
        stored_upload_objects(dir.path()).len(),
        1,
        "only info.json is left"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn creation_with_upload_and_termination() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let r = Client::new()
        .post(format!("{base}/files/"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", bytes.len().to_string())
        .header("Content-Type", OCTET)
        .body(bytes[..5000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(num(&r, "upload-offset"), 5000);
    let url = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(num(&tus_head(&url).await, "upload-offset"), 5000);
    // A client that cannot send PATCH or DELETE uses X-HTTP-Method-Override.
    let r = Client::new()
        .post(&url)
        .header("X-HTTP-Method-Override", "PATCH")
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", OCTET)
        .header("Upload-Offset", "5000")
        .body(bytes[5000..6000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(num(&r, "upload-offset"), 6000);
    let r = Client::new()
        .post(&url)
        .header("X-HTTP-Method-Override", "DELETE")
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(tus_head(&url).await.status(), 404);
    assert_eq!(patch(&url, 6000, vec![0; 10]).await.status(), 404);
    let r = Client::new()
        .delete(&url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "terminating twice");
    assert!(stored_upload_objects(dir.path()).is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_file_is_refused_at_its_first_patch_and_nothing_stays() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let text = std::fs::read(clip("text")).unwrap();
    let big = text.len() as u64 * 1000; // claims to be large: refused long before that
    let url = create_url(&base, big, &[("filename", "notes.mp4")]).await;
    let r = patch(&url, 0, text.clone()).await;
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("text file"), "{v}");
    assert_eq!(
        tus_head(&url).await.status(),
        404,
        "the upload was terminated"
    );
    assert!(stored_upload_objects(dir.path()).is_empty());
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 0);
    // A declared image type is refused at creation.
    let r = create(&base, 100, &[("filetype", "image/png")]).await;
    assert_eq!(r.status(), 415);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_sha256_of_known_bytes_returns_the_video_without_a_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let (status, v) = upload(&base, &clip("video")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let sha = sha256_hex(&bytes);

    // tus: the upload is born complete.
    let r = create(&base, bytes.len() as u64, &[("sha256", &sha)]).await;
    assert_eq!(r.status(), 201);
    assert_eq!(num(&r, "upload-offset"), bytes.len() as u64);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    let url = r.headers()["location"].to_str().unwrap().to_string();
    let r = tus_head(&url).await;
    assert_eq!(num(&r, "upload-offset"), bytes.len() as u64);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());

    // POST /upload: answered from the header; the (wrong) body is never taken.
    let r = Client::new()
        .post(format!("{base}/upload"))
        .header("Reel-Content-Sha256", sha.to_uppercase())
        .body("this body is not those bytes and is never read")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["video_id"].as_str(), v["duplicate"].as_bool()),
        (Some(id.as_str()), Some(true))
    );

    // A declared digest that the body does not match stores nothing.
    let r = Client::new()
        .post(format!("{base}/upload"))
        .header("Reel-Content-Sha256", "ab".repeat(32))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_whole_file_sha256_makes_no_video() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let url = create_url(&base, bytes.len() as u64, &[("sha256", &"cd".repeat(32))]).await;
    let r = patch(&url, 0, bytes).await;
    assert_eq!(r.status(), 460);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("not the declared"),
        "{v}"
    );
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 0);
    assert!(stored_upload_objects(dir.path()).is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_resumes_after_its_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let node = start(config.clone()).await;
    let bytes = std::fs::read(clip("av")).unwrap();
    let url = create_url(&node.url(), bytes.len() as u64, &[]).await;
    let half = bytes.len() / 2;
    assert_eq!(patch(&url, 0, bytes[..half].to_vec()).await.status(), 204);
    let path = url::Url::parse(&url).unwrap().path().to_string();
    node.stop().await;

    let node = start(config).await;
    let base = node.url();
    let url = format!("{base}{path}");
    let r = tus_head(&url).await;
    assert_eq!(num(&r, "upload-offset"), half as u64, "the offset survived");
    let r = patch(&url, half as u64, bytes[half..].to_vec()).await;
    assert_eq!(r.status(), 204);
    let id = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), &id)),
        sha256_hex(&bytes)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_final_response_cut_patch_and_concurrent_patch() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let len = bytes.len();
    let url = create_url(&base, len as u64, &[]).await;

    // A PATCH cut mid-way keeps what fully arrived.
    let s = raw_patch(&url, 0, 10_000, &bytes[..6_000]).await;
    drop(s);
    wait_offset(&url, 6_000).await;

    // A second PATCH while one is running is refused with 423 and changes nothing. Two PATCHes
    // at the same offset each send part of their body and hold: whichever the node takes first
    // holds the upload (it never answers while its body is awaited), the other is refused at
    // once, in either order.
    let mut a = raw_patch(&url, 6_000, 4_000, &bytes[6_000..7_000]).await;
    let mut b = raw_patch(&url, 6_000, 4_000, &bytes[6_000..7_000]).await;
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            s = raw_status(&mut a) => s,
            s = raw_status(&mut b) => s,
        }
    })
    .await
    .expect("neither concurrent PATCH was answered");
    assert_eq!(
        refused, 423,
        "the PATCH that did not get the upload is refused"
    );
    drop(a);
    drop(b);
    wait_offset(&url, 7_000).await;

    // The last PATCH completes, but the client never reads the answer.
    let mut s = raw_patch(&url, 7_000, len - 7_000, &bytes[7_000..]).await;
    s.shutdown().await.unwrap();
    drop(s);
    let r = wait_offset(&url, len as u64).await;
    let id = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    // A client that resends its last chunk is told the upload is complete, and by what video.
    let r = patch(&url, 7_000, bytes[7_000..].to_vec()).await;
    assert_eq!(r.status(), 204);
    assert_eq!(num(&r, "upload-offset"), len as u64);
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), &id)),
        sha256_hex(&bytes)
    );
    node.stop().await;
}

/// Issue 9: a PATCH whose client went silent without closing (a phone that changed networks)
/// used to hold the upload for ever: every resume got 423. Now the body idle timeout cuts it,
/// keeps what arrived and gives the upload back; a PUT that stalls gets 408 and stores nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_is_cut_after_the_idle_timeout_and_the_resume_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.body_idle_seconds = 1;
    let node = start(config).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let len = bytes.len();
    let url = create_url(&base, len as u64, &[]).await;

    // 6,000 of the declared bytes, then silence with the connection open.
    let silent = raw_patch(&url, 0, len, &bytes[..6_000]).await;
    let r = wait_offset(&url, 6_000).await;
    assert_eq!(r.status(), 200);
    // The resume gets in (not 423) and completes the upload.
    let r = patch(&url, 6_000, bytes[6_000..].to_vec()).await;
    assert_eq!(r.status(), 204, "{:?}", r.headers());
    let id = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    drop(silent);
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), &id)),
        sha256_hex(&bytes)
    );

    // A PUT that declares 100,000 bytes, sends 5,000 and goes silent: 408, nothing stored.
    let u = url::Url::parse(&base).unwrap();
    let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", u.port().unwrap()))
        .await
        .unwrap();
    s.write_all(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&bytes[..5_000]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut answer))
        .await
        .expect("the server answers a silent PUT")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("nothing was stored"), "{answer}");
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(
        list.as_array()
            .map(|a| a.len())
            .or(list["videos"].as_array().map(|a| a.len())),
        Some(1),
        "only the tus video: {list}"
    );
    node.stop().await;
}

/// Issue 10: `Reel-Forwarded-By` makes a node act on a request it does not own, so a client
/// that sends it is refused before any route, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_sent_forwarding_header_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let url = create_url(&base, bytes.len() as u64, &[]).await;
    let client = Client::new();
    for value in ["node-2", "node-2;t=0;sig=00", "t1;t=1;sig=zz"] {
        let r = client
            .patch(&url)
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", OCTET)
            .header("Upload-Offset", "0")
            .header("Reel-Forwarded-By", value)
            .body(bytes[..4_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{value}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("Reel-Forwarded-By"),
            "{body}"
        );
        let r = client
            .get(format!("{base}/videos"))
            .header("Reel-Forwarded-By", value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{value}");
    }
    assert_eq!(
        num(&tus_head(&url).await, "upload-offset"),
        0,
        "nothing was stored"
    );
    // Without the header the same PATCH is taken.
    let r = patch(&url, 0, bytes[..4_000].to_vec()).await;
    assert_eq!(r.status(), 204);
    node.stop().await;
}

/// Issue 10: the tus `Location` never echoes a Host the client chose; with `public_url`
/// configured it is built from that.
#[tokio::test(flavor = "multi_thread")]
async fn the_upload_location_never_points_where_a_client_host_header_says() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let u = url::Url::parse(&base).unwrap();
    let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", u.port().unwrap()))
        .await
        .unwrap();
    s.write_all(
        b"POST /files/ HTTP/1.1\r\nHost: evil.example\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 10\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let location = answer
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location: {answer}"));
    assert!(location.starts_with("/files/"), "relative: {location}");
    assert!(!answer.contains("evil.example"), "{answer}");
    node.stop().await;

    let mut config = test_config(dir.path());
    config.public_url = Some("https://videos.example.com".into());
    let node = start(config).await;
    let r = create(&node.url(), 10, &[]).await;
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://videos.example.com/files/"),
        "{location}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn incomplete_uploads_expire_and_their_parts_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.upload_expiry_seconds = 1;
    let node = start(config).await;
    let bytes = std::fs::read(clip("video")).unwrap();
    let url = create_url(&node.url(), bytes.len() as u64, &[]).await;
    let r = patch(&url, 0, bytes[..5000].to_vec()).await;
    assert_eq!(r.status(), 204);
    let expires =
        httpdate::parse_http_date(r.headers()["upload-expires"].to_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= Duration::from_secs(2),
        "expires in about 1 s: {left:?}"
    );
    assert_eq!(
        stored_upload_objects(dir.path()).len(),
        2,
        "info.json and one part"
    );
    wait_until(
        "the sweep deletes the upload",
        Duration::from_secs(20),
        || {
            let dir = dir.path().to_path_buf();
            async move { stored_upload_objects(&dir).is_empty() }
        },
    )
    .await;
    assert_eq!(tus_head(&url).await.status(), 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_malformed_header_gets_a_clear_4xx_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_upload_bytes = 10_000_000;
    let node = start(config).await;
    let base = node.url();
    let bytes = std::fs::read(clip("video")).unwrap();
    let url = create_url(&base, bytes.len() as u64, &[]).await;
    assert_eq!(patch(&url, 0, bytes[..4096].to_vec()).await.status(), 204);
    let id = url.rsplit('/').next().unwrap().to_string();
    let chunk = bytes[4096..5096].to_vec();
    let good_sha1 = format!("sha1 {}", b64(&sha1::Sha1::digest(&chunk)));

    // (what, method, path, headers, expected status)
    type Case<'a> = (&'a str, Method, String, Vec<(&'a str, String)>, u16);
    let files = format!("{base}/files/");
    let v = |s: &str| s.to_string();
    let std_patch = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![
            ("Tus-Resumable", v("1.0.0")),
            ("Content-Type", v(OCTET)),
            ("Upload-Offset", v("4096")),
        ];
        for (k, val) in extra {
            h.retain(|(hk, _)| *hk != k);
            if !val.is_empty() {
                h.push((k, val));
            }
        }
        h
    };
    let cases: Vec<Case> = vec![
        (
            "no Tus-Resumable",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Tus-Resumable", v(""))]),
            412,
        ),
        (
            "old Tus-Resumable",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Tus-Resumable", v("0.2.2"))]),
            412,
        ),
        (
            "wrong Content-Type",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Content-Type", v("application/octet-stream"))]),
            415,
        ),
        (
            "no Content-Type",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Content-Type", v(""))]),
            415,
        ),
        (
            "negative offset",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Offset", v("-1"))]),
            400,
        ),
        (
            "non-numeric offset",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Offset", v("12abc"))]),
            400,
        ),
        (
            "huge offset",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Offset", v("99999999999999999999999"))]),
            400,
        ),
        (
            "missing offset",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Offset", v(""))]),
            400,
        ),
        (
            "offset mismatch",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Offset", v("0"))]),
            409,
        ),
        (
            "checksum mismatch",
            Method::PATCH,
            url.clone(),
            std_patch(vec![(
                "Upload-Checksum",
                format!("sha1 {}", b64(&[0u8; 20])),
            )]),
            460,
        ),
        (
            "unknown checksum algorithm",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Checksum", v("crc32 AAAAAA=="))]),
            400,
        ),
        (
            "checksum not base64",
            Method::PATCH,
            url.clone(),
            std_patch(vec![("Upload-Checksum", v("sha1 !!!"))]),
            400,
        ),
        (
            "unknown upload id",
            Method::PATCH,
            format!("{files}t0.0123456789abcdef0123456789abcdef"),
            std_patch(vec![("Upload-Checksum", good_sha1.clone())]),
            404,
        ),
        (
            "id with dots",
            Method::PATCH,
            format!("{files}..%2F..%2Fsources"),
            std_patch(vec![]),
            404,
        ),
        (
            "id with encoded slash",
            Method::HEAD,
            format!("{files}{}%2F..", id),
            vec![("Tus-Resumable", v("1.0.0"))],
            404,
        ),
        (
            "id with a path",
            Method::PATCH,
            format!("{files}{id}/info.json"),
            std_patch(vec![]),
            404,
        ),
        (
            "id 'direct'",
            Method::HEAD,
            format!("{files}direct"),
            vec![("Tus-Resumable", v("1.0.0"))],
            404,
        ),
        (
            "no Upload-Length",
            Method::POST,
            files.clone(),
            vec![("Tus-Resumable", v("1.0.0"))],
            400,
        ),
        (
            "negative Upload-Length",
            Method::POST,
            files.clone(),
            vec![("Tus-Resumable", v("1.0.0")), ("Upload-Length", v("-5"))],
            400,
        ),
        (
            "Upload-Length over the limit",
            Method::POST,
            files.clone(),
            vec![
                ("Tus-Resumable", v("1.0.0")),
                ("Upload-Length", v("10000001")),
            ],
            413,
        ),
        (
            "deferred length",
            Method::POST,
            files.clone(),
            vec![
                ("Tus-Resumable", v("1.0.0")),
                ("Upload-Defer-Length", v("1")),
            ],
            400,
        ),
        (
            "metadata not base64",
            Method::POST,
            files.clone(),
            vec![
                ("Tus-Resumable", v("1.0.0")),
                ("Upload-Length", v("10")),
                ("Upload-Metadata", v("filename ***")),
            ],
            400,
        ),
        (
            "metadata sha256 not hex",
            Method::POST,
            files.clone(),
            vec![
                ("Tus-Resumable", v("1.0.0")),
                ("Upload-Length", v("10")),
                ("Upload-Metadata", format!("sha256 {}", b64(b"xyz"))),
            ],
            400,
        ),
        (
            "creation without Tus-Resumable",
            Method::POST,
            files.clone(),
            vec![("Upload-Length", v("10"))],
            412,
        ),
        (
            "delete without Tus-Resumable",
            Method::DELETE,
            url.clone(),
            vec![],
            412,
        ),
    ];
    for (what, method, target, headers, want) in cases {
        let mut req = Client::new().request(method.clone(), &target);
        for (k, val) in &headers {
            req = req.header(*k, val);
        }
        if method == Method::PATCH {
            req = req.body(chunk.clone());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{what}");
        if !target.ends_with("info.json") {
            // (A path that is no tus route gets the plain JSON 404.)
            assert_eq!(r.headers()["tus-resumable"], "1.0.0", "{what}");
        }
        if method != Method::HEAD {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {body}"
            );
        }
    }
    // Nothing moved: the upload is still at 4096 with its one part, and no video exists.
    assert_eq!(num(&tus_head(&url).await, "upload-offset"), 4096);
    assert_eq!(stored_upload_objects(dir.path()).len(), 2);
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 0);
    // And the upload still completes.
    let r = patch(&url, 4096, bytes[4096..].to_vec()).await;
    assert_eq!(r.status(), 204);
    node.stop().await;
}

/// Run `tests/tus/tuspy_upload.py` with `args`; returns its JSON line. Fails loudly, with the
/// fix, when tuspy is missing.
async fn tuspy(args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tus/tuspy_upload.py");
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("tuspy finishes in 120 s")
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'tusclient'"),
        "tuspy is not installed: run scripts/setup --test (pip install tuspy)"
    );
    assert!(out.status.success(), "tuspy failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tuspy printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tuspy_interrupted_at_three_offsets_resumes_to_a_ready_video_with_intact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let file = clip("av");
    let bytes = std::fs::read(&file).unwrap();
    let endpoint = format!("{base}/files/");
    let chunk = 32 * 1024;
    let v = tuspy(&[
        &endpoint,
        file.to_str().unwrap(),
        &chunk.to_string(),
        "40000,120000,200000",
    ])
    .await;
    let offsets: Vec<u64> = v["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 40_000, "{offsets:?}");
    assert_eq!(offsets[1], 120_000, "{offsets:?}");
    assert_eq!(
        offsets[2],
        120_000 + chunk / 2,
        "half of the cut chunk was kept"
    );
    assert_eq!(*offsets.last().unwrap(), bytes.len() as u64);
    let url = v["url"].as_str().unwrap();
    let r = tus_head(url).await;
    let id = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    let rec = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert_eq!(rec["filename"], "av.bin");
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), &id)),
        sha256_hex(&bytes),
        "the stored source is the original, byte for byte"
    );

    // The same file declared by sha256: the existing id, with nothing sent.
    let v = tuspy(&["--dedupe", &endpoint, file.to_str().unwrap()]).await;
    assert_eq!(v["offset"], v["size"], "{v}");
    let r = tus_head(v["url"].as_str().unwrap()).await;
    assert_eq!(r.headers()["reel-video-id"], id.as_str());
    let events = event_kinds(&base, &id).await;
    assert_eq!(count(&events, "duplicate_upload"), 1, "{events:?}");
    assert_eq!(count(&events, "job_started"), 1, "no new processing");
    node.stop().await;
}

/// A [`relay_proxy`] to `target` that cuts the connection carrying forwarded byte number
/// `cuts[i]` (counted over all connections), once per cut. Returns its address, the bytes it
/// forwarded, and the cuts still to come.
async fn cutting_proxy(
    target: std::net::SocketAddr,
    cuts: Vec<u64>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) {
    let cuts = std::sync::Arc::new(std::sync::Mutex::new(cuts));
    let pending = cuts.clone();
    let (addr, sent) = relay_proxy(target, move |before, n| {
        let mut c = cuts.lock().unwrap();
        match c.first().copied() {
            Some(at) if before + n as u64 >= at => {
                c.remove(0);
                Relay::Cut((at - before.min(at)) as usize)
            }
            _ => Relay::Forward,
        }
    })
    .await;
    (addr, sent, pending)
}

#[tokio::test(flavor = "multi_thread")]
async fn reel_upload_resumes_after_dropped_connections_and_dedupes_before_transfer() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let (proxy, sent, cuts) = cutting_proxy(node.addr, vec![100_000, 200_000]).await;
    let server = format!("http://{proxy}");
    let file = clip("av");
    let bytes = std::fs::read(&file).unwrap();
    // The default: the rest of the file in one PATCH each time; a cut one keeps what arrived.
    let opts = reel::client::UploadOptions {
        chunk_bytes: reel::client::UploadOptions::default().chunk_bytes,
        retries: 5,
        backoff: Duration::from_millis(20),
        progress: false,
        stall: Duration::from_secs(30),
        resume_file: Some(dir.path().join("client/uploads.json")),
    };
    let v = reel::client::upload_with(&[&server], &file, &opts)
        .await
        .unwrap();
    assert_eq!(v["duplicate"], false, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    assert!(
        ["uploaded", "processing"].contains(&v["state"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), &id)),
        sha256_hex(&bytes)
    );
    assert!(cuts.lock().unwrap().is_empty(), "both connections were cut");

    // The same file again: the existing id, and (almost) nothing on the wire.
    let before = sent.load(Ordering::SeqCst);
    let v = reel::client::upload_with(&[&server], &file, &opts)
        .await
        .unwrap();
    assert_eq!(
        (v["video_id"].as_str(), v["duplicate"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    let extra = sent.load(Ordering::SeqCst) - before;
    assert!(
        extra < 2_000,
        "only a creation request went out: {extra} bytes"
    );

    // A client stopped mid-upload (no retries left) resumes on its next run.
    let (proxy, _, _) = cutting_proxy(node.addr, vec![60_000]).await;
    let once = reel::client::UploadOptions {
        retries: 0,
        ..opts.clone()
    };
    let long = clip("video");
    let e = reel::client::upload_with(&[format!("http://{proxy}")], &long, &once).await;
    assert!(e.is_err(), "the first run gives up: {e:?}");
    let remembered = std::fs::read_to_string(dir.path().join("client/uploads.json")).unwrap();
    let url = serde_json::from_str::<serde_json::Value>(&remembered)
        .unwrap()
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    // The server records the cut PATCH once it sees the connection end.
    wait_until(
        "the server keeps the first bytes",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move { num(&tus_head(&url).await, "upload-offset") > 0 }
        },
    )
    .await;
    let v = reel::client::upload_with(&[format!("http://{proxy}")], &long, &opts)
        .await
        .unwrap();
    assert_eq!(
        v["upload"],
        url.as_str(),
        "the same upload was resumed: {v}"
    );
    assert_eq!(v["duplicate"], false);
    let id = v["video_id"].as_str().unwrap();
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), id)),
        sha256_hex(&std::fs::read(&long).unwrap())
    );
    let remembered = std::fs::read_to_string(dir.path().join("client/uploads.json")).unwrap();
    assert_eq!(remembered, "{}", "a finished upload is forgotten");

    // A text file is refused with the server's reason, at once.
    let e = reel::client::upload_with(&[&server], &clip("text"), &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("415") && e.contains("text file"), "{e}");
    node.stop().await;
}

/// `reel upload` given several servers goes on through the next when the one it talks to
/// cannot be reached: a server that refuses connections (creation goes to the next), and one
/// that hangs mid-`PATCH` as a stopped node does (no byte moves for the stall bound, or its
/// `/health` goes unanswered once the body has gone). The upload finishes, whole, through a
/// server that answers; without the stall bound the client would wait for ever.
#[tokio::test(flavor = "multi_thread")]
async fn reel_upload_goes_on_through_the_next_server_when_one_is_dead_or_hangs() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // The hung PATCH's lease comes back after this (the node's own bound on a silent body).
    config.limits.body_idle_seconds = 2;
    let node = start(config).await;
    let direct = format!("http://{}", node.addr);
    let dead = format!("http://{}", free_addr());
    let file = clip("long");
    let bytes = std::fs::read(&file).unwrap();
    let (hangs, forwarded) = hanging_proxy(node.addr, bytes.len() as u64 / 4).await;
    let hangs = format!("http://{hangs}");
    let opts = reel::client::UploadOptions {
        retries: 12,
        backoff: Duration::from_millis(50),
        progress: false,
        stall: Duration::from_secs(1),
        resume_file: None,
        ..Default::default()
    };
    let v = tokio::time::timeout(
        Duration::from_secs(120),
        reel::client::upload_with(&[&dead, &hangs, &direct], &file, &opts),
    )
    .await
    .expect("the client waited on the hung server")
    .unwrap();
    assert!(
        forwarded.load(Ordering::SeqCst) >= bytes.len() as u64 / 4,
        "the upload was under way through the server that hung"
    );
    let upload = v["upload"].as_str().unwrap();
    assert!(upload.starts_with(&direct), "finished through {upload}");
    let id = v["video_id"].as_str().unwrap();
    assert_eq!(
        sha256_hex(&stored_source(dir.path(), id)),
        sha256_hex(&bytes)
    );

    // `reel status` goes past the dead server too.
    let s = reel::client::status(&[&dead, &direct], id, None)
        .await
        .unwrap();
    assert_eq!(s["video_id"], id, "{s}");
    node.stop().await;
}
