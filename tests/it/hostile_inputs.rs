//! The bad-input corpus (issue 10): 26 kinds of file that are not a usable video, each sent over
//! both upload paths (`PUT /upload` and a tus creation + `PATCH`) to its own node. For every one:
//! a clear answer (an immediate 4xx, or `failed` with a sentence) naming what is wrong, no
//! server path in it, nothing published (`master.m3u8` is not served), no upload bytes left
//! behind, and the node still healthy.

use std::path::Path;
use std::time::Duration;

use reqwest::Client;
use serde_json::Value;

use crate::helpers::*;

/// Run ffmpeg to make a corpus file; returns its bytes.
fn made_with_ffmpeg(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(&out)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg {args:?}");
    std::fs::read(out).unwrap()
}

/// Bytes that look like `magic` then noise.
fn magic_then_noise(magic: &[u8], len: usize) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend((0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8));
    b
}

/// `(kind, bytes, what the answer must say)`.
fn corpus(dir: &Path) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let read = |kind: &str| std::fs::read(clip(kind)).unwrap();
    let srt = dir.join("subs.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:02,000\nhello\n").unwrap();
    let mut ftyp = vec![0, 0, 0, 0x18];
    ftyp.extend_from_slice(b"ftypisom\0\0\x02\0isomiso2");
    let mut utf16 = vec![0xFF, 0xFE];
    for c in "a holiday video, honest\n".repeat(200).encode_utf16() {
        utf16.extend_from_slice(&c.to_le_bytes());
    }
    let mut ts_noise = Vec::new();
    for i in 0..400u32 {
        ts_noise.push(0x47);
        ts_noise.extend((0..187u32).map(|j| ((i * 187 + j).wrapping_mul(2654435761) >> 9) as u8));
    }
    vec![
        ("text", read("text"), "text file, not a video"),
        ("random bytes", read("random"), "not a video"),
        ("AAC audio in MP4", read("audio"), "only audio (aac)"),
        ("MP4 cut in half", read("truncated"), "truncated"),
        (
            "MP4 cut in half, moov last",
            read("truncated-moov-last"),
            "truncated",
        ),
        (
            "MP4 with a zeroed middle",
            read("zeroed-middle"),
            "damaged between",
        ),
        ("empty file", Vec::new(), "empty"),
        (
            "PNG image",
            magic_then_noise(b"\x89PNG\r\n\x1a\n", 5000),
            "PNG image",
        ),
        (
            "JPEG image",
            magic_then_noise(b"\xFF\xD8\xFF\xE0", 5000),
            "JPEG image",
        ),
        ("GIF image", magic_then_noise(b"GIF89a", 5000), "GIF image"),
        ("PDF", magic_then_noise(b"%PDF-1.7\n", 5000), "PDF document"),
        ("ZIP", magic_then_noise(b"PK\x03\x04", 5000), "ZIP archive"),
        (
            "gzip",
            magic_then_noise(b"\x1F\x8B\x08", 5000),
            "gzip archive",
        ),
        (
            "ELF program",
            magic_then_noise(b"\x7FELF\x02\x01\x01", 5000),
            "program (ELF)",
        ),
        (
            "HTML page",
            "<!doctype html><html><body>watch my video</body></html>\n"
                .repeat(100)
                .into_bytes(),
            "text file",
        ),
        (
            "JSON",
            r#"{"video": "not really", "frames": [1, 2, 3]}"#
                .repeat(120)
                .into_bytes(),
            "text file",
        ),
        ("UTF-16 text", utf16, "not a video"),
        (
            "MP4 header then noise",
            magic_then_noise(&ftyp, 20_000),
            "truncated",
        ),
        (
            "Matroska header then noise",
            magic_then_noise(&[0x1A, 0x45, 0xDF, 0xA3], 20_000),
            "not a video",
        ),
        ("MPEG-TS sync bytes, noise payload", ts_noise, "not a video"),
        (
            "MP3",
            made_with_ffmpeg(dir, "a.mp3", &["-f", "lavfi", "-i", "sine", "-t", "2"]),
            "MP3 audio file",
        ),
        (
            "WAV",
            made_with_ffmpeg(dir, "a.wav", &["-f", "lavfi", "-i", "sine", "-t", "1"]),
            "WAV audio file",
        ),
        (
            "FLAC",
            made_with_ffmpeg(dir, "a.flac", &["-f", "lavfi", "-i", "sine", "-t", "1"]),
            "FLAC audio file",
        ),
        (
            "WebM with only Opus audio",
            made_with_ffmpeg(
                dir,
                "a.webm",
                &["-f", "lavfi", "-i", "sine", "-t", "2", "-c:a", "libopus"],
            ),
            "only audio (opus)",
        ),
        (
            "Matroska with only subtitles",
            made_with_ffmpeg(dir, "s.mkv", &["-i", srt.to_str().unwrap()]),
            "no video stream",
        ),
        (
            "MOV with PNG-coded video",
            made_with_ffmpeg(
                dir,
                "p.mov",
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=64x64:rate=5",
                    "-t",
                    "1",
                    "-c:v",
                    "png",
                ],
            ),
            "video codec (png) is not one reel can decode",
        ),
    ]
}

/// What a node answered for one file.
#[derive(Debug)]
enum Answer {
    /// Refused at once: status and error sentence.
    Refused(u16, String),
    /// Accepted as a video: its id.
    Accepted(String),
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn answer(status: u16, v: &Value) -> Answer {
    match (status, v["video_id"].as_str()) {
        (200 | 201 | 202 | 204, Some(id)) => Answer::Accepted(id.to_string()),
        _ => Answer::Refused(status, v["error"].as_str().unwrap_or("").to_string()),
    }
}

async fn by_put(base: &str, bytes: Vec<u8>) -> Answer {
    let r = Client::new()
        .put(format!("{base}/upload"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(r).await;
    answer(status, &v)
}

async fn by_tus(base: &str, bytes: Vec<u8>) -> Answer {
    let url = match tus_create(base, bytes.len()).await {
        Ok(url) => url,
        Err((status, v)) => return answer(status, &v),
    };
    let r = tus_patch(&url, 0, bytes).await;
    if r.status() != 204 {
        let (status, v) = json_of(r).await;
        return answer(status, &v);
    }
    // Complete: the last PATCH names the video.
    let id = r
        .headers()
        .get("reel-video-id")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("a complete upload names its video");
    Answer::Accepted(id)
}

async fn run_corpus(path: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let data = dir.path().to_string_lossy().into_owned();
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (kind, bytes, expect) in corpus(scratch.path()) {
        let got = match path {
            "put" => by_put(&base, bytes).await,
            _ => by_tus(&base, bytes).await,
        };
        let sentence = match &got {
            Answer::Refused(status, error) => {
                if !(400..500).contains(status) {
                    failures.push(format!("{path} {kind}: status {status}: {error}"));
                }
                error.clone()
            }
            Answer::Accepted(id) => {
                let v = wait_terminal(&base, id, Duration::from_secs(60)).await;
                if v["state"] != "failed" {
                    failures.push(format!("{path} {kind}: {v}"));
                }
                let (status, _) = get_json(&format!("{base}/videos/{id}/master.m3u8")).await;
                if status != 409 {
                    failures.push(format!("{path} {kind}: master.m3u8 answered {status}"));
                }
                let outputs: Vec<String> =
                    files_under(&dir.path().join(format!("objects/videos/{id}")))
                        .into_iter()
                        // The record, and LocalFileSystem's lock file for its swaps.
                        .filter(|f| f != "record.json" && f != "record.lock")
                        .collect();
                if !outputs.is_empty() {
                    failures.push(format!("{path} {kind}: outputs {outputs:?}"));
                }
                v["error"].as_str().unwrap_or("").to_string()
            }
        };
        eprintln!("{path:>3} {kind:<36} {sentence}");
        if !sentence.contains(expect) {
            failures.push(format!("{path} {kind}: {got:?} does not say {expect:?}"));
        }
        if sentence.contains(&data) || sentence.contains("/tmp") {
            failures.push(format!("{path} {kind}: a server path in {sentence:?}"));
        }
        let (status, _) = get_json(&format!("{base}/health")).await;
        assert_eq!(status, 200, "healthy after {kind}");
    }
    // No upload bytes left behind: no body in flight, no part of a tus upload.
    let leftovers: Vec<String> = files_under(&dir.path().join("objects/uploads"))
        .into_iter()
        .filter(|f| !f.ends_with("info.json") && !f.ends_with("info.lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (_, list) = get_json(&format!("{base}/videos")).await;
    for v in list["videos"].as_array().unwrap() {
        assert_eq!(v["state"], "failed", "{v}");
    }
    node.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_six_kinds_of_bad_file_by_put_get_a_clear_answer_and_leave_nothing() {
    run_corpus("put").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_six_kinds_of_bad_file_by_tus_get_a_clear_answer_and_leave_nothing() {
    run_corpus("tus").await;
}

/// A small deterministic generator, so a failing request can be replayed from its number.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.next() as usize % from.len()]
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_paths_and_headers_never_get_a_5xx_or_leave_upload_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let id = "0123456789abcdef0123456789abcdef";
    let prefixes = [
        "/videos/",
        "/videos/{id}/",
        "/videos/{id}/s/node-1-0123456789abcdef/",
        "/files/",
        "/upload",
        "/videos/{id}/240p/",
        "/",
        "/cluster/",
        "/ready/",
    ];
    let pieces = [
        "",
        "..",
        "%2e%2e",
        "%2F",
        "..%2F..%2Fetc%2Fpasswd",
        "index.m3u8",
        "00000.m4s",
        "init.mp4",
        "master.m3u8",
        "record.json",
        "%00",
        "%ff%fe",
        "a".repeat(300).leak(),
        "node-1.0123456789abcdef0123456789abcdef",
        "events",
        "reprocess",
        "ü",
        "%E2%80%AE",
        "99999.m4s",
        "-1.m4s",
        "s",
        "//",
        "?x=../..",
        "#frag",
        "%20",
    ];
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let names = [
        "range",
        "upload-offset",
        "upload-length",
        "tus-resumable",
        "upload-metadata",
        "upload-checksum",
        "reel-forwarded-by",
        "if-none-match",
        "content-type",
        "reel-content-sha256",
        "upload-defer-length",
        "x-http-method-override",
    ];
    let values = [
        "",
        "0",
        "-1",
        "18446744073709551616",
        "bytes=-0",
        "bytes=0-0,1-1,2-2",
        "bytes=5-1",
        "bytes=--",
        "1.0.0",
        "0.2.2",
        "filename",
        "filename !!!",
        "sha1 !!",
        "sha256 AAAA",
        "node-2;t=0;sig=00",
        "node-1",
        "*",
        "\"x\", W/\"y\"",
        "application/offset+octet-stream",
        "multipart/form-data; boundary=",
        "zz",
        "1e9",
        " 7 ",
        "PATCH",
    ];
    let mut rng = Lcg(2026);
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    for n in 0..3000 {
        let mut path = rng.pick(&prefixes).replace("{id}", id);
        for _ in 0..rng.next() % 3 {
            path.push_str(rng.pick(&pieces));
            if rng.next().is_multiple_of(2) {
                path.push('/');
            }
        }
        let method: reqwest::Method = rng.pick(&methods).parse().unwrap();
        let mut req = client.request(method.clone(), format!("{base}{path}"));
        let mut sent = Vec::new();
        for _ in 0..rng.next() % 4 {
            let (k, v) = (rng.pick(&names), rng.pick(&values));
            sent.push(format!("{k}: {v}"));
            req = req.header(k, v);
        }
        if rng.next().is_multiple_of(3) {
            req = req.body(vec![b'x'; (rng.next() % 5000) as usize]);
        }
        let Ok(resp) = req.send().await else {
            // reqwest refused to build it (an invalid URL): nothing was sent.
            continue;
        };
        let status = resp.status().as_u16();
        *answers.entry(status).or_default() += 1;
        assert!(
            status < 500,
            "request {n}: {method} {path} {sent:?} answered {status}: {:?}",
            resp.text().await
        );
    }
    eprintln!("fuzzed answers by status: {answers:?}");
    let (status, _) = get_json(&format!("{base}/health")).await;
    assert_eq!(status, 200);
    // A body of x's sent to /upload is a text file, refused with 415 before it is stored:
    // nothing the fuzzer sends makes a video.
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 0, "{list}");
    assert!(!answers.contains_key(&202), "{answers:?}");
    let leftovers: Vec<String> = files_under(&dir.path().join("objects/uploads"))
        .into_iter()
        .filter(|f| !f.ends_with("info.json") && !f.ends_with("info.lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    node.stop().await;
}
