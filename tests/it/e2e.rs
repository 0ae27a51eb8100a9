//! Upload to playback on one node, with a third-party client (ffmpeg) as the player.

use crate::helpers::*;

/// Upload a clip, wait for ready, play the multivariant playlist with `ffmpeg -xerror`, and
/// check every rendition's resolution, segment count and duration.
async fn upload_and_play(kind: &str, expect: &[(&str, u64, u64)]) {
    let dir = tempfile::tempdir().unwrap();
    upload_and_play_with(test_config(dir.path()), kind, expect).await;
}

/// [`upload_and_play`] on a node with `config` (the S3 tests run it against SeaweedFS).
pub(crate) async fn upload_and_play_with(
    config: reel::config::Config,
    kind: &str,
    expect: &[(&str, u64, u64)],
) {
    let node = start(config).await;
    let base = node.url();
    let (status, v) = upload(&base, &clip(kind)).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["progress"], 1.0);
    let duration = v["source"]["duration_seconds"].as_f64().unwrap();

    let master = format!("{base}/videos/{id}/master.m3u8");
    play(&master)
        .await
        .expect("ffmpeg plays the multivariant playlist");
    let variants = variants(&master).await;
    // Variant URIs sit under the session path (`s/{session}/240p/index.m3u8`): the rendition is
    // the directory holding the media playlist.
    let names: Vec<_> = variants
        .iter()
        .map(|v| v.uri.rsplit('/').nth(1).unwrap().to_string())
        .collect();
    let want: Vec<_> = expect.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(names, want, "variant streams, highest bandwidth first");

    let mut counts = Vec::new();
    for (name, w, h) in expect {
        let media = format!("{base}/videos/{id}/{name}/index.m3u8");
        let (pw, ph, frames, _) = probe(&media).await;
        assert_eq!((pw, ph), (*w, *h), "resolution of {name}");
        assert!(frames > 0);
        let segs = segments(&media).await;
        let total: f32 = segs.iter().map(|s| s.1).sum();
        assert!(
            (total as f64 - duration).abs() < 0.5,
            "{name}: {total} s of {duration} s"
        );
        // 2 s segments: every segment but the last is exactly the segment duration.
        for (uri, d) in &segs[..segs.len() - 1] {
            assert!((d - 2.0).abs() < 0.05, "{name}/{uri} lasts {d}");
        }
        counts.push(segs.len());
        play(&media).await.expect("each media playlist plays");
    }
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "aligned renditions: {counts:?}"
    );
    assert_eq!(counts[0], (duration / 2.0).ceil() as usize);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clip_with_audio_plays_in_every_rendition() {
    upload_and_play("av", &[("240p", 320, 240), ("180p", 240, 180)]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clip_without_audio_plays() {
    upload_and_play("video", &[("240p", 320, 240), ("180p", 240, 180)]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_clip_plays_at_its_own_size_with_the_default_ladder() {
    // carphone is 176x144 with 128:117 pixels (192x144 displayed), smaller than every default
    // rung: one rendition at its own display size, square pixels.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.processing = reel::config::ProcessingConfig::default();
    let node = start(config).await;
    let base = node.url();
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/media/carphone_pristine.mp4");
    let (status, v) = upload(&base, &clip).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap();
    let v = wait_terminal(&base, id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["renditions"][0]["name"], "144p");
    assert_eq!(v["source"]["has_audio"], false);
    let master = format!("{base}/videos/{id}/master.m3u8");
    play(&master).await.unwrap();
    let (w, h, frames, _) = probe(&format!("{base}/videos/{id}/144p/index.m3u8")).await;
    assert_eq!((w, h), (192, 144));
    assert_eq!(frames, 120, "every source frame arrives");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_uploads_start_one_job_even_when_they_race() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let file = clip("av");
    let racers = (0..4).map(|_| {
        let base = base.clone();
        let file = file.clone();
        tokio::spawn(async move { upload(&base, &file).await })
    });
    let mut answers = Vec::new();
    for r in racers {
        answers.push(r.await.unwrap());
    }
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, v)| v["video_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one content address: {answers:?}");
    let created = answers
        .iter()
        .filter(|(s, v)| *s == 202 && v["duplicate"] == false)
        .count();
    let dups = answers
        .iter()
        .filter(|(s, v)| *s == 200 && v["duplicate"] == true)
        .count();
    assert_eq!((created, dups), (1, 3), "{answers:?}");
    let id = ids.into_iter().next().unwrap();
    let id = id.as_str();
    wait_terminal(&base, id, PROCESSING_DEADLINE).await;

    // Once ready, the same bytes again: 200, same id, still one job.
    let (status, v) = upload(&base, &file).await;
    assert_eq!(
        (status, v["video_id"].as_str(), v["state"].as_str()),
        (200, Some(id), Some("ready"))
    );
    let events = event_kinds(&base, id).await;
    assert_eq!(count(&events, "job_started"), 1, "{events:?}");
    assert_eq!(
        count(&events, "task_dispatched"),
        2,
        "one task per rendition: {events:?}"
    );
    assert_eq!(count(&events, "duplicate_upload"), 4);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_and_post_uploads_work_and_the_playlist_waits_for_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let bytes = tokio::fs::read(clip("long")).await.unwrap();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes.clone()).file_name("long.mp4"),
    );
    let resp = reqwest::Client::new()
        .post(format!("{base}/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/videos/"));
    let v: serde_json::Value = resp.json().await.unwrap();
    let id = v["video_id"].as_str().unwrap().to_string();
    // A 30 s clip takes seconds to process: the playlist is not there yet.
    let early = reqwest::get(format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    assert_eq!(early.status(), 409);
    let seg = reqwest::get(format!("{base}/videos/{id}/240p/00000.m4s"))
        .await
        .unwrap();
    assert_eq!(seg.status(), 409, "no segment is visible before ready");
    // The same bytes as a plain POST body are the same video.
    let resp = reqwest::Client::new()
        .post(format!("{base}/upload"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v2: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v2["video_id"], v["video_id"]);
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["filename"], "long.mp4");
    let resp = reqwest::get(format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let resp = reqwest::get(format!("{base}/videos/{id}/240p/00000.m4s"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert!(resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let (_, list) = get_json(&format!("{base}/videos")).await;
    assert_eq!(list["videos"].as_array().unwrap().len(), 1);
    // 30 s is encoded in two chunks (each decoded once for every rendition), audio once, then
    // packaged: every source
    // frame arrives exactly once across the chunk boundary, and the segments stay aligned.
    let events = event_kinds(&base, &id).await;
    assert!(
        events.iter().any(|e| e["task"] == "chunk-0001"),
        "chunked: {events:#?}"
    );
    for name in ["240p", "180p"] {
        let (_, _, frames, duration) =
            probe(&format!("{base}/videos/{id}/{name}/index.m3u8")).await;
        assert_eq!(frames, 900, "{name}: 30 s at 30 fps");
        assert!((duration - 30.0).abs() < 0.1, "{name}: {duration} s");
        let segs = segments(&format!("{base}/videos/{id}/{name}/index.m3u8")).await;
        assert_eq!(segs.len(), 15);
        assert!(
            segs.iter().all(|s| (s.1 - 2.0).abs() < 0.05),
            "{name}: {segs:?}"
        );
    }
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    let work = dir.path().join("objects/work");
    wait_until(
        "intermediates deleted once the video is ready",
        std::time::Duration::from_secs(10),
        || {
            let work = work.clone();
            async move {
                // LocalFileSystem leaves empty directories; count files only.
                fn files(p: &std::path::Path) -> usize {
                    std::fs::read_dir(p).map_or(0, |d| {
                        d.flatten()
                            .map(|e| {
                                if e.path().is_dir() {
                                    files(&e.path())
                                } else {
                                    1
                                }
                            })
                            .sum()
                    })
                }
                files(&work) == 0
            }
        },
    )
    .await;
    node.stop().await;
}

/// Issue 9: a video that failed for a reason on the server's side (here every ffmpeg run
/// fails: a preset that does not exist) is processed again from its stored source once the
/// fault is fixed, instead of answering "duplicate, failed" for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_video_is_processed_again_after_the_fault_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken = test_config(dir.path());
    broken.processing.preset = "no-such-preset".into();
    broken.processing.max_attempts = 2;
    let node = start(broken).await;
    let base = node.url();
    let (status, v) = upload(&base, &clip("av")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "failed", "{v}");
    // `reel status` says so on its last line, exits non-zero, and names the way back.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(["status", &id, "--server", &base])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("{id} failed: {}", v["error"].as_str().unwrap())),
        "{stdout}"
    );
    assert!(stderr.contains(&format!("reel reprocess {id}")), "{stderr}");
    node.stop().await;

    // The operator fixes the configuration, restarts, and asks for the video again with
    // `reel reprocess`, naming three servers: a port nothing listens on, then a node that
    // takes the request and stops answering (a proxy that passes the request on, then hangs),
    // then the node itself, which refuses with 409 because the hung one already reopened the
    // video. The client takes that as done: the record it read first was `failed`.
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let dead = format!("http://{}", free_addr());
    // The proxy answers the client's first request (its read of the record), and hangs on the
    // next, the `POST`, once it has passed it on.
    let (hangs, _) = relay_proxy(node.addr, |before, n| {
        if before == 0 {
            Relay::Forward
        } else {
            Relay::Hang(n)
        }
    })
    .await;
    let hangs = format!("http://{hangs}");
    let v = reel::client::reprocess(
        &[&dead, &hangs, &base],
        &id,
        std::time::Duration::from_secs(2),
    )
    .await
    .expect("reprocess through the servers that answer");
    assert_ne!(v["state"], "failed", "{v}");
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(v["error"].is_null(), "{v}");
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    let events = event_kinds(&base, &id).await;
    assert_eq!(count(&events, "reprocess_requested"), 1, "{events:#?}");

    // Only a failed video can be reprocessed, also after a failover; an unknown one is 404.
    let refused =
        reel::client::reprocess(&[&dead, &base], &id, std::time::Duration::from_secs(2)).await;
    assert!(
        matches!(&refused, Err(reel::client::ClientError::Refused { status: 409, message })
            if message.contains("is ready")),
        "{refused:?}"
    );
    let client = reqwest::Client::new();
    let post = |what: String| client.post(what).send();
    let r = post(format!("{base}/videos/{id}/reprocess")).await.unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("is ready"),
        "{body}"
    );
    let unknown = "0".repeat(32);
    let r = post(format!("{base}/videos/{unknown}/reprocess"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    node.stop().await;
}

/// `GET /videos` pages through the library in id order with a cursor; only a page's records
/// are read. Bad paging parameters get 400.
#[tokio::test(flavor = "multi_thread")]
async fn the_video_list_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let storage = reel::storage::Storage::open(&config.storage).unwrap();
    let mut ids = Vec::new();
    for i in 0..250u32 {
        let id = format!("{:032x}", (i as u128).wrapping_mul(0x9E3779B97F4A7C15));
        let mut r = reel::model::VideoRecord::uploaded(
            id.clone(),
            "0".repeat(64),
            1,
            "default".into(),
            None,
        );
        r.state = reel::model::VideoState::Failed;
        r.error = Some("made by the test".into());
        assert!(storage.create_record(&r).await.unwrap());
        ids.push(id);
    }
    ids.sort();
    let node = start(config).await;
    let base = node.url();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &after {
            None => format!("{base}/videos?limit=100"),
            Some(a) => format!("{base}/videos?limit=100&after={a}"),
        };
        let (status, v) = get_json(&url).await;
        assert_eq!(status, 200, "{v}");
        pages += 1;
        let page: Vec<String> = v["videos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["video_id"].as_str().unwrap().to_string())
            .collect();
        assert!(page.len() <= 100);
        seen.extend(page);
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every video once, in id order");
    let (_, first) = get_json(&format!("{base}/videos")).await;
    assert_eq!(
        first["videos"].as_array().unwrap().len(),
        100,
        "default page"
    );
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=../x",
        "after=ABC",
    ] {
        let (status, v) = get_json(&format!("{base}/videos?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    node.stop().await;
}
