//! Three-node clusters of real `reel serve` processes on 127.0.0.1 (two NodeServers in one
//! process would confuse ractor's process groups). Each test starts its own cluster on free
//! ports with its own shared storage directory, is bounded in time, and stops only the
//! processes it started.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

const COOKIE: &str = "test-cookie-not-secret";

pub(crate) struct TestCluster {
    pub(crate) dir: tempfile::TempDir,
    config: std::path::PathBuf,
    /// Extra environment of every node (S3 credentials and endpoint).
    env: Vec<(String, String)>,
    pub(crate) nodes: Vec<Option<ReelProcess>>,
    urls: Vec<String>,
    /// Where each node listens when that is not its `http` in the file (a node behind a
    /// relay, [`TestCluster::start_behind_relay`]).
    listen: Vec<Option<std::net::SocketAddr>>,
}

impl TestCluster {
    pub(crate) async fn start(n: usize) -> Self {
        Self::start_on(n, "local:objects", &[], "").await
    }

    /// Start `n` nodes on `storage` (a `cluster.toml` storage value), with `env` added to each
    /// node's environment and `extra` appended to the file (more tables).
    pub(crate) async fn start_on(
        n: usize,
        storage: &str,
        env: &[(String, String)],
        extra: &str,
    ) -> Self {
        Self::start_inner(n, storage, env, extra, None).await
    }

    /// Start `n` nodes with `extra` appended to the file; node `behind` listens on a port of
    /// its own, and its `http` address in the file, the one its peers forward to and the one
    /// [`TestCluster::url`] gives, is a [`relay_proxy`] to it deciding with `decide`.
    pub(crate) async fn start_behind_relay(
        n: usize,
        extra: &str,
        behind: usize,
        decide: impl Fn(u64, usize) -> Relay + Send + Sync + 'static,
    ) -> Self {
        let own = free_addr();
        let (front, _) = relay_proxy(own, decide).await;
        let behind = Some((behind, front, own));
        Self::start_inner(n, "local:objects", &[], extra, behind).await
    }

    async fn start_inner(
        n: usize,
        storage: &str,
        env: &[(String, String)],
        extra: &str,
        behind: Option<(usize, std::net::SocketAddr, std::net::SocketAddr)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!("storage = \"{storage}\"\n{extra}\n");
        toml.push_str(
            r#"[cluster]
heartbeat_ms = 300
fence_after = 3
reconcile_seconds = 2
lease_seconds = 2
[processing]
segment_seconds = 2
preset = "ultrafast"
backoff_initial_ms = 100
backoff_max_ms = 500
stuck_after_seconds = 30
[[processing.ladder]]
name = "240p"
height = 240
video_kbps = 400
audio_kbps = 64
[[processing.ladder]]
name = "180p"
height = 180
video_kbps = 250
audio_kbps = 48
[[processing.ladder]]
name = "120p"
height = 120
video_kbps = 120
audio_kbps = 32
"#,
        );
        let mut urls = Vec::new();
        let mut listen = vec![None; n];
        for i in 1..=n {
            let (mut http, cluster) = (free_addr(), free_addr());
            if let Some((b, front, own)) = behind.filter(|b| b.0 == i) {
                (http, listen[b - 1]) = (front, Some(own));
            }
            toml.push_str(&format!(
                "[[node]]\nid = \"node-{i}\"\nhttp = \"{http}\"\ncluster = \"{cluster}\"\nworkers = 1\n"
            ));
            urls.push(format!("http://{http}"));
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).unwrap();
        let mut c = Self {
            dir,
            config,
            env: env.to_vec(),
            nodes: Vec::new(),
            urls,
            listen,
        };
        for i in 1..=n {
            let p = c.spawn(i);
            c.nodes.push(Some(p));
        }
        for url in c.urls.clone() {
            wait_healthy(&url).await;
        }
        c.wait_live(&(1..=n).collect::<Vec<_>>(), n).await;
        c
    }

    pub(crate) fn spawn(&self, i: usize) -> ReelProcess {
        let node = format!("node-{i}");
        let mut env = vec![("REEL_CLUSTER_COOKIE", COOKIE)];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let listen = self.listen[i - 1].map(|a| a.to_string());
        let config = self.config.to_str().unwrap();
        let mut args = vec!["serve", "--config", config, "--node", &node];
        if let Some(a) = &listen {
            args.extend(["--listen", a.as_str()]);
        }
        ReelProcess::start(&args, &env, self.dir.path().join(format!("{node}.log")))
    }

    pub(crate) fn url(&self, i: usize) -> &str {
        &self.urls[i - 1]
    }

    pub(crate) fn index_of(&self, node: &str) -> usize {
        node.trim_start_matches("node-").parse().unwrap()
    }

    /// Wait until each node in `observers` sees exactly `live` live members.
    pub(crate) async fn wait_live(&self, observers: &[usize], live: usize) {
        for &i in observers {
            let url = format!("{}/cluster", self.url(i));
            wait_until(
                &format!("node-{i} to see {live} live members"),
                Duration::from_secs(60),
                || {
                    let url = url.clone();
                    async move {
                        match reqwest::get(&url).await {
                            Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["live"] == live),
                            Err(_) => false,
                        }
                    }
                },
            )
            .await;
        }
    }

    /// Upload the test clip `name` through node `i` and wait until it is ready; its id.
    pub(crate) async fn upload_ready(&self, i: usize, name: &str) -> String {
        let (_, v) = upload(self.url(i), &clip(name)).await;
        let id = v["video_id"].as_str().unwrap().to_string();
        let v = wait_terminal(self.url(i), &id, PROCESSING_DEADLINE).await;
        assert_eq!(v["state"], "ready", "{v}\n{}", self.logs());
        id
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(40).collect();
                out += &format!(
                    "--- {:?}\n{}\n",
                    entry.file_name(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }
}

/// The nodes that ran tasks of a video, from the merged event log.
fn task_nodes(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "task_started")
        .filter_map(|e| {
            e["detail"]
                .as_str()?
                .strip_prefix("on node ")
                .map(str::to_string)
        })
        .collect()
}

/// Same renditions, segment counts and durations as an undisturbed run of a clip of `duration`.
pub(crate) async fn check_media(base: &str, id: &str, duration: f64) {
    let master = format!("{base}/videos/{id}/master.m3u8");
    play(&master).await.expect("plays with ffmpeg -xerror");
    // Variant URIs sit under the playback session's path (`s/{session}/240p/index.m3u8`).
    let names: Vec<String> = variants(&master)
        .await
        .iter()
        .map(|v| v.uri.rsplit('/').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(names, ["240p", "180p", "120p"]);
    for name in ["240p", "180p", "120p"] {
        let segs = segments(&format!("{base}/videos/{id}/{name}/index.m3u8")).await;
        assert_eq!(segs.len(), (duration / 2.0).ceil() as usize, "{name}");
        for (uri, d) in &segs[..segs.len() - 1] {
            assert!((d - 2.0).abs() < 0.05, "{name}/{uri} lasts {d}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_spread_one_video_and_any_node_answers() {
    let c = TestCluster::start(3).await;
    // 30 s: longer than one 16 s chunk, so each rendition is encoded as two chunks.
    let (status, v) = upload(c.url(2), &clip("long")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(c.url(3), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}\n{}", c.logs());
    let events = event_kinds(c.url(1), &id).await;
    let nodes = task_nodes(&events);
    assert!(nodes.len() >= 2, "tasks ran on {nodes:?}: {events:#?}");
    assert_eq!(count(&events, "job_started"), 1, "{events:#?}");
    // The chunk tasks (each decodes its span once for every rendition) ran on different nodes;
    // the audio was encoded once per bitrate.
    let chunk_nodes: BTreeSet<String> = events
        .iter()
        .filter(|e| {
            e["kind"] == "task_started"
                && e["task"].as_str().is_some_and(|t| t.starts_with("chunk-"))
        })
        .filter_map(|e| e["detail"].as_str().map(str::to_string))
        .collect();
    assert!(
        chunk_nodes.len() >= 2,
        "chunks ran on {chunk_nodes:?}: {events:#?}"
    );
    let audio_runs = events
        .iter()
        .filter(|e| {
            e["kind"] == "task_succeeded"
                && e["task"].as_str().is_some_and(|t| t.starts_with("audio-"))
        })
        .count();
    assert_eq!(
        audio_runs, 3,
        "one audio encode per distinct bitrate (64, 48, 32 kbit/s)"
    );
    for i in 1..=3 {
        check_media(
            c.url(i),
            &id,
            v["source"]["duration_seconds"].as_f64().unwrap(),
        )
        .await;
    }
    let (_, cluster) = get_json(&format!("{}/cluster", c.url(1))).await;
    let shares: f64 = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ring_share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{cluster}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_jobs_node_still_ends_ready_and_the_node_rejoins() {
    let mut c = TestCluster::start(3).await;
    let (_, v) = upload(c.url(1), &clip("long")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    let (_, status) = get_json(&format!("{}/videos/{id}", c.url(1))).await;
    let home = c.index_of(status["home_node"].as_str().unwrap());
    let other = if home == 1 { 2 } else { 1 };
    wait_until("a task started", PROCESSING_DEADLINE, || {
        let (base, id) = (c.url(other).to_string(), id.clone());
        async move { count(&event_kinds(&base, &id).await, "task_started") >= 1 }
    })
    .await;
    c.nodes[home - 1].as_mut().unwrap().kill9();
    let v = wait_terminal(c.url(other), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}\n{}", c.logs());
    assert_ne!(
        v["home_node"],
        format!("node-{home}"),
        "a survivor owns it now"
    );
    check_media(
        c.url(other),
        &id,
        v["source"]["duration_seconds"].as_f64().unwrap(),
    )
    .await;
    let events = event_kinds(c.url(other), &id).await;
    assert!(
        count(&events, "job_resumed") >= 1,
        "the new home resumed the job: {events:#?}"
    );

    // The killed node restarts and rejoins with no manual step.
    let p = c.spawn(home);
    c.nodes[home - 1] = Some(p);
    wait_healthy(c.url(home)).await;
    c.wait_live(&[1, 2, 3], 3).await;
    let (status, v) = get_json(&format!("{}/videos/{id}", c.url(home))).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("ready")));
    play(&format!("{}/videos/{id}/master.m3u8", c.url(home)))
        .await
        .unwrap();
}

/// Issue 9: a node restarting while other nodes hold running jobs takes no ownership
/// decision before it has heard its peers. Seeing only itself, it used to find itself home of
/// every unfinished video and claim them all within a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_claims_nothing_before_it_has_heard_its_peers() {
    let mut c = TestCluster::start(3).await;
    // A minute of video: still processing when the restarted node is back.
    let (_, v) = upload(c.url(1), &clip("abr")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    let (_, status) = get_json(&format!("{}/videos/{id}", c.url(1))).await;
    let home = c.index_of(status["home_node"].as_str().unwrap());
    let restarted = if home == 3 { 2 } else { 3 };
    wait_until("a task started", PROCESSING_DEADLINE, || {
        let (base, id) = (c.url(home).to_string(), id.clone());
        async move { count(&event_kinds(&base, &id).await, "task_started") >= 1 }
    })
    .await;
    c.nodes[restarted - 1].as_mut().unwrap().kill9();
    let p = c.spawn(restarted);
    c.nodes[restarted - 1] = Some(p);
    wait_healthy(c.url(restarted)).await;
    let (_, v) = get_json(&format!("{}/videos/{id}", c.url(home))).await;
    assert_eq!(
        v["state"], "processing",
        "the job must still run when the node is back (a longer clip is needed)"
    );
    c.wait_live(&[1, 2, 3], 3).await;
    // Tasks queued on the restarted node died with it: handed out again, not waited on.
    let v = wait_terminal(c.url(home), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}\n{}", c.logs());
    let events = event_kinds(c.url(restarted), &id).await;
    let claims: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "lease_claimed")
        .collect();
    assert_eq!(
        claims.len(),
        1,
        "one owner from start to ready: {claims:#?}\n{}",
        c.logs()
    );
    assert_eq!(claims[0]["node"], format!("node-{home}"), "{claims:#?}");
    // The restarted node said when its view settled.
    let (_, node_events) = get_json(&format!("{}/cluster", c.url(restarted))).await;
    assert_eq!(node_events["settled"], true, "{node_events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_node_is_fenced_its_work_finishes_elsewhere_and_it_stands_down() {
    let c = TestCluster::start(3).await;
    let (_, v) = upload(c.url(1), &clip("long")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    let (_, status) = get_json(&format!("{}/videos/{id}", c.url(1))).await;
    let home = c.index_of(status["home_node"].as_str().unwrap());
    let others: Vec<usize> = (1..=3).filter(|i| *i != home).collect();
    wait_until("a task started", PROCESSING_DEADLINE, || {
        let (base, id) = (c.url(others[0]).to_string(), id.clone());
        async move { count(&event_kinds(&base, &id).await, "task_started") >= 1 }
    })
    .await;
    let hung = c.nodes[home - 1].as_ref().unwrap();
    hung.stop();
    // Fenced within a few seconds: 3 missed heartbeats of 300 ms.
    c.wait_live(&others, 2).await;
    let v = wait_terminal(c.url(others[0]), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}\n{}", c.logs());
    hung.resume();
    c.wait_live(&[1, 2, 3], 3).await;
    // The woken node never writes over the new owner: the video stays ready, and its own log
    // shows it stood down or handed the video off.
    wait_until(
        "the woken node to stand down",
        Duration::from_secs(60),
        || {
            let (base, id) = (c.url(home).to_string(), id.clone());
            async move {
                let (_, v) = get_json(&format!("{base}/videos/{id}/events?scope=local")).await;
                let evs = v["events"].as_array().cloned().unwrap_or_default();
                count(&evs, "stood_down") + count(&evs, "handed_off") >= 1
            }
        },
    )
    .await;
    let (_, v) = get_json(&format!("{}/videos/{id}", c.url(home))).await;
    assert_eq!(v["state"], "ready", "{v}");
    check_media(
        c.url(home),
        &id,
        v["source"]["duration_seconds"].as_f64().unwrap(),
    )
    .await;
}

/// tus requests for an upload go to its home node from whichever node receives them; when the
/// home dies mid-upload, the ring's new owner takes the upload over from the object store and
/// the client finishes through any node, with the bytes intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_tus_upload_survives_its_home_node_and_any_node_serves_it() {
    let mut c = TestCluster::start(3).await;
    let bytes = tokio::fs::read(clip("long")).await.unwrap();
    let up = TusUpload::create(&c, 1, bytes, reqwest::Client::new()).await;
    let upload_id = up.path.trim_start_matches("/files/");
    assert!(
        upload_id.starts_with("node-1."),
        "the id names its home: {upload_id}"
    );
    // A third of the bytes through node 2: forwarded to node 1, the home.
    let third = up.bytes.len() / 3;
    let r = up.patch(2, 0, third).await.unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    // The home dies. HEAD through node 3: the ring's owner takes the upload over.
    c.nodes[0].as_mut().unwrap().kill9();
    c.wait_live(&[2, 3], 2).await;
    let r = up.head(3).await.unwrap();
    assert_eq!(r.status(), 200);
    let offset = upload_offset(&r);
    assert_eq!(
        offset, third,
        "every byte that arrived before the crash is kept"
    );
    let r = up.patch(3, offset, up.bytes.len()).await.unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let id = r.headers()["reel-video-id"].to_str().unwrap().to_string();
    let v = wait_terminal(c.url(2), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}\n{}", c.logs());
    assert_eq!(
        sha256_hex(&stored_source(c.dir.path(), &id)),
        sha256_hex(&up.bytes)
    );
}

/// `reel upload` given two nodes of a cluster finishes when the node it uploads through, the
/// upload's home, is killed mid-upload: the client goes on through the second node, which
/// takes the upload over from the store, and the video becomes ready with the bytes whole.
#[tokio::test(flavor = "multi_thread")]
async fn reel_upload_goes_on_through_another_node_when_its_node_dies_mid_upload() {
    use std::sync::atomic::Ordering;
    let mut c = TestCluster::start(3).await;
    let file = clip("long");
    let bytes = std::fs::read(&file).unwrap();
    // Node 1 through a proxy that stops a quarter of the way, so the kill lands mid-upload.
    let node1: std::net::SocketAddr = c.url(1).trim_start_matches("http://").parse().unwrap();
    let quarter = bytes.len() as u64 / 4;
    let (proxy, forwarded) = hanging_proxy(node1, quarter).await;
    let servers = [format!("http://{proxy}"), c.url(2).to_string()];
    let opts = reel::client::UploadOptions {
        retries: 12,
        backoff: Duration::from_millis(200),
        progress: false,
        stall: Duration::from_secs(2),
        resume_file: None,
        ..Default::default()
    };
    let upload = tokio::spawn({
        let file = file.clone();
        async move { reel::client::upload_with(&servers, &file, &opts).await }
    });
    wait_until(
        "a quarter of the upload through node 1",
        Duration::from_secs(60),
        || {
            let forwarded = forwarded.clone();
            async move { forwarded.load(Ordering::SeqCst) >= quarter }
        },
    )
    .await;
    c.nodes[0].as_mut().unwrap().kill9();
    let v = tokio::time::timeout(Duration::from_secs(120), upload)
        .await
        .expect("the client finished within its bound")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let through = v["upload"].as_str().unwrap();
    assert!(through.starts_with(c.url(2)), "finished through {through}");
    let id = v["video_id"].as_str().unwrap();
    assert_eq!(
        sha256_hex(&stored_source(c.dir.path(), id)),
        sha256_hex(&bytes)
    );
    let state = wait_terminal(c.url(3), id, PROCESSING_DEADLINE).await;
    assert_eq!(state["state"], "ready", "{state}\n{}", c.logs());
}

/// A tus request forwarded to an upload's home that hangs is not held for as long as the
/// client waits: once the forwarding node's view fences the home, a `PATCH` on its way there
/// gets `503` (its body cannot be sent twice; the client asks the offset and resumes) and a
/// `HEAD` is routed again, to the node that takes the upload over, which answers the offset
/// the store holds. The client then finishes through any node.
#[tokio::test(flavor = "multi_thread")]
async fn a_tus_request_forwarded_to_a_home_that_hangs_is_answered() {
    let c = TestCluster::start(3).await;
    let bytes = tokio::fs::read(clip("av")).await.unwrap();
    // Without a bound of its own the old code's forwards waited as long as this client.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let up = TusUpload::create(&c, 1, bytes, client).await;
    assert!(up.path.starts_with("/files/node-1."), "{}", up.path);
    let third = up.bytes.len() / 3;
    let r = up.patch(2, 0, third).await.unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);

    // The home hangs; a PATCH and a HEAD are forwarded to it through node 2 at once (node 2
    // fences it after 3 missed heartbeats of 300 ms).
    c.nodes[0].as_ref().unwrap().stop();
    let (patched, head) = tokio::join!(up.patch(2, third, 2 * third), up.head(2));
    let patched = patched.unwrap_or_else(|e| panic!("PATCH: {e}\n{}", c.logs()));
    assert_eq!(
        patched.status(),
        503,
        "the PATCH on its way to the hung home"
    );
    assert!(patched.headers().contains_key("retry-after"));
    let head = head.unwrap_or_else(|e| panic!("HEAD: {e}\n{}", c.logs()));
    assert_eq!(head.status(), 200, "{}", c.logs());
    let offset = upload_offset(&head);
    assert_eq!(
        offset, third,
        "the store's offset: the refused PATCH added nothing"
    );
    // Each node fences the hung home on its own heartbeats: node 3, still holding it live,
    // would forward there too (and answer 503 once it fences it). Finish once it has.
    c.wait_live(&[3], 2).await;
    let r = up.patch(3, offset, up.bytes.len()).await.unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    assert!(
        r.headers().contains_key("reel-video-id"),
        "{:?}",
        r.headers()
    );
    c.nodes[0].as_ref().unwrap().resume();
}

/// A tus upload of `bytes`, created through one node of a test cluster, asked and written
/// through any node.
struct TusUpload {
    client: reqwest::Client,
    urls: Vec<String>,
    /// `/files/{upload_id}`, the same on every node.
    path: String,
    bytes: Vec<u8>,
}

impl TusUpload {
    /// Create the upload through node `node` (1-based): `201` with a `Location`.
    async fn create(c: &TestCluster, node: usize, bytes: Vec<u8>, client: reqwest::Client) -> Self {
        let resp = client
            .post(format!("{}/files/", c.url(node)))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", bytes.len())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let location = resp.headers()["location"].to_str().unwrap();
        let path = location[location.find("/files/").unwrap()..].to_string();
        Self {
            client,
            urls: c.urls.clone(),
            path,
            bytes,
        }
    }

    /// `PATCH` bytes `from..to` through node `node`.
    fn patch(
        &self,
        node: usize,
        from: usize,
        to: usize,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
        self.client
            .patch(format!("{}{}", self.urls[node - 1], self.path))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", from)
            .header("Content-Type", "application/offset+octet-stream")
            .body(self.bytes[from..to].to_vec())
            .send()
    }

    /// `HEAD` through node `node`.
    fn head(
        &self,
        node: usize,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
        self.client
            .head(format!("{}{}", self.urls[node - 1], self.path))
            .header("Tus-Resumable", "1.0.0")
            .send()
    }
}

/// A tus answer's `Upload-Offset`.
fn upload_offset(r: &reqwest::Response) -> usize {
    r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Seed rule 7 with real nodes: a playback session stays on its home node while the ring
/// changes (another node dies), and moves exactly once, to one other node, when its home is
/// killed. The client talks to a different node the whole time (as through a load balancer),
/// plays to the end, and the playback logs alone show who served what.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_stays_home_while_the_ring_changes_and_moves_once_when_home_dies() {
    use reel::storage::playback::{PlaybackEvent, JSONL_NAME};
    use reel::streaming::timeline::Timeline;
    let mut c = TestCluster::start(3).await;
    let id = c.upload_ready(1, "av").await;
    // The session starts on node 1 (the master playlist is fetched there).
    let sid = start_session(c.url(1), &id).await;
    assert!(sid.starts_with("node-1-"), "{sid}");
    let via2 = |file: &str| format!("{}/videos/{id}/s/{sid}/180p/{file}", c.urls[1]);
    let playlist = segments(&via2("index.m3u8")).await;
    let get = |url: String| async move {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        r.bytes().await.unwrap()
    };
    let mut media = get(via2("init.mp4")).await.to_vec();
    media.extend_from_slice(&get(via2(&playlist[0].0)).await);
    // The ring changes (node 3 dies): the session stays on node 1.
    c.nodes[2].as_mut().unwrap().kill9();
    c.wait_live(&[1, 2], 2).await;
    media.extend_from_slice(&get(via2(&playlist[1].0)).await);
    // Node 1's log holds its two SERVEs before it is killed (the writer batches).
    let log1 = c.dir.path().join("reel-data/node-1").join(JSONL_NAME);
    wait_until("node 1 logged its serves", Duration::from_secs(10), || {
        let (log1, sid) = (log1.clone(), sid.clone());
        async move {
            let text = std::fs::read_to_string(&log1).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains(&sid) && l.contains("\"SERVE\""))
                .count()
                >= 2
        }
    })
    .await;
    // The home dies mid-playback; the client keeps asking node 2, which takes the session over.
    c.nodes[0].as_mut().unwrap().kill9();
    c.wait_live(&[2], 1).await;
    for (uri, _) in &playlist[2..] {
        media.extend_from_slice(&get(via2(uri)).await);
    }
    let file = c.dir.path().join("played.mp4");
    std::fs::write(&file, &media).unwrap();
    let (w, h, frames, _) = probe(file.to_str().unwrap()).await;
    assert_eq!(
        (w, h, frames),
        (240, 180, 150),
        "the client played every frame"
    );

    let dirs = [
        c.dir.path().join("reel-data/node-1"),
        c.dir.path().join("reel-data/node-2"),
    ];
    // Node 2's writer batches too: wait until its last SERVE is on disk.
    let last = playlist.len() - 1;
    wait_until("node 2 logged its serves", Duration::from_secs(10), || {
        let (dirs, sid) = (dirs.clone(), sid.clone());
        async move {
            Timeline::load(&dirs, &sid)
                .is_ok_and(|(t, _)| t.serves().any(|r| r.segment == Some(last)))
        }
    })
    .await;
    let (t, _) = Timeline::load(&dirs, &sid).unwrap();
    let serves: Vec<(usize, String)> = t
        .serves()
        .map(|r| (r.segment.unwrap(), r.node_id.clone()))
        .collect();
    let mut want = vec![(0, "node-1".to_string()), (1, "node-1".to_string())];
    want.extend((2..playlist.len()).map(|k| (k, "node-2".to_string())));
    assert_eq!(serves, want, "{}", t.render_text());
    let moved: Vec<_> = t
        .records
        .iter()
        .filter(|r| r.event == PlaybackEvent::SessionReassigned)
        .collect();
    assert_eq!(moved.len(), 1, "{}", t.render_text());
    assert_eq!(moved[0].node_id, "node-2");
    assert!(
        moved[0].detail.as_deref().unwrap_or("").contains("node-1"),
        "{}",
        t.render_text()
    );
}

/// A session's request that another node forwards to the session's home is not lost when the
/// home hangs or dies while it is under way: the forwarding node answers it itself (a
/// takeover) once its view drops the home. Without that, a hung home held the request until
/// the player gave up, and a killed one answered 503 to whatever raced its detection.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_forwarded_to_a_home_that_hangs_or_dies_is_answered_by_a_takeover() {
    let mut c = TestCluster::start(3).await;
    let id = c.upload_ready(1, "av").await;
    // The bytes of each segment, fetched without a session from node 2.
    let playlist = segments(&format!("{}/videos/{id}/180p/index.m3u8", c.url(2))).await;
    assert!(playlist.len() >= 3, "{playlist:?}");
    let plain = |k: usize| format!("{}/videos/{id}/180p/{}", c.url(2), playlist[k].0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let fetch = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(&url).send().await;
            let r = r.unwrap_or_else(|e| panic!("{url}: {e}"));
            (r.status().as_u16(), r.bytes().await.unwrap_or_default())
        }
    };

    // Hung: node 1 is the home; node 2 forwards a request to it, and node 1 is stopped first.
    let sid = start_session(c.url(1), &id).await;
    assert!(sid.starts_with("node-1-"), "{sid}");
    let via2 = |k: usize| format!("{}/videos/{id}/s/{sid}/180p/{}", c.url(2), playlist[k].0);
    assert_eq!(fetch(via2(0)).await, (200, fetch(plain(0)).await.1));
    c.nodes[0].as_ref().unwrap().stop();
    // Sent at once: node 2 fences node 1 only after 3 missed heartbeats of 300 ms.
    let (status, body) = fetch(via2(1)).await;
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        c.logs()
    );
    assert!(body == fetch(plain(1)).await.1, "segment 1's bytes");

    // Killed: a session homed on node 3, requests in flight through node 2 when it dies.
    let sid3 = start_session(c.url(3), &id).await;
    assert!(sid3.starts_with("node-3-"), "{sid3}");
    let via2of3 = |k: usize| format!("{}/videos/{id}/s/{sid3}/180p/{}", c.url(2), playlist[k].0);
    assert_eq!(fetch(via2of3(0)).await.0, 200);
    let burst: Vec<_> = (0..16)
        .map(|i| tokio::spawn(fetch(via2of3(1 + i % (playlist.len() - 1)))))
        .collect();
    c.nodes[2].as_mut().unwrap().kill9();
    for (i, task) in burst.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_eq!(
            status,
            200,
            "request {i}: {}\n{}",
            String::from_utf8_lossy(&body),
            c.logs()
        );
    }
    c.nodes[0].as_ref().unwrap().resume();
}

/// A node can answer its peers' heartbeats and not HTTP (a wedged listener; here a relay in
/// front of node 1 that stops passing bytes on). The view keeps it live, so nothing fences
/// it: a session request and a tus `HEAD` forwarded to it by node 2 are answered `504` once
/// they and node 1's `/health` have been silent for `limits.body_idle_seconds` (2 s here),
/// not held for as long as their client waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_forwarded_to_a_node_whose_http_is_wedged_is_answered_504() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let wedged = std::sync::Arc::new(AtomicBool::new(false));
    let flag = wedged.clone();
    let limits = "[limits]\nbody_idle_seconds = 2\n";
    let c = TestCluster::start_behind_relay(3, limits, 1, move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Relay::Hang(0)
        } else {
            Relay::Forward
        }
    })
    .await;
    let id = c.upload_ready(2, "av").await;
    let playlist = segments(&format!("{}/videos/{id}/180p/index.m3u8", c.url(2))).await;
    let sid = start_session(c.url(1), &id).await;
    assert!(sid.starts_with("node-1-"), "{sid}");
    let via2 = |k: usize| format!("{}/videos/{id}/s/{sid}/180p/{}", c.url(2), playlist[k].0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = client.get(via2(0)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let upload = tus_create(c.url(1), 1000).await.unwrap();
    let upload_id = upload.rsplit('/').next().unwrap().to_string();
    assert!(upload_id.starts_with("node-1."), "{upload}");

    wedged.store(true, Ordering::SeqCst);
    let r = client.get(via2(1)).send().await;
    let r = r.unwrap_or_else(|e| panic!("the session request was held: {e}\n{}", c.logs()));
    assert_eq!(r.status(), 504);
    let e = r.json::<Value>().await.unwrap()["error"].to_string();
    assert!(
        e.contains("node node-1 has held") && e.contains("/health"),
        "{e}"
    );
    let head = client
        .head(format!("{}/files/{upload_id}", c.url(2)))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap_or_else(|e| panic!("the tus HEAD was held: {e}"));
    assert_eq!(head.status(), 504);
    // Its heartbeats still answer: the view holds node 1 live all along.
    let (_, view) = get_json(&format!("{}/cluster", c.url(2))).await;
    assert_eq!(view["live"], 3, "{view}");
}
