//! Shared helpers for the integration tests: tiny clips made with ffmpeg, shrunken configs,
//! in-process nodes on free loopback ports, and clients (HTTP, ffmpeg, ffprobe).
//!
//! Waiting is always a bounded poll with a deadline, never a bare sleep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use reel::config::{Config, RungConfig};
use serde_json::Value;

/// How long any test waits for a video to finish processing.
pub const PROCESSING_DEADLINE: Duration = Duration::from_secs(120);

static FIXTURES: OnceLock<PathBuf> = OnceLock::new();

/// A directory of generated clips shared by every test in this process.
pub fn fixtures() -> &'static Path {
    FIXTURES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("reel-fixtures-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Run `ffmpeg -v error -y ARGS`; panics with its error output if it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write a 640x360 clip of `seconds` with a `tone_hz` sine (the tone tells clips apart, so
/// each has its own bytes and video id), x264 `ultrafast` + AAC.
pub fn tone_clip(out: &Path, seconds: u32, tone_hz: u32) {
    let (tone, seconds) = (
        format!("sine=frequency={tone_hz}:sample_rate=48000"),
        seconds.to_string(),
    );
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-f",
        "lavfi",
        "-i",
        &tone,
        "-t",
        &seconds,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        "-shortest",
        out.to_str().unwrap(),
    ]);
}

/// Make (once) and return a clip. `kind`: `av` 320x240 6 s with audio, `video` the same without
/// audio, `long` 640x360 30 s with audio (slow enough to crash mid-task), `audio` audio only,
/// `abr` 640x360 60 s of noisy testsrc2 without audio (player tests), `truncated` an MP4 with `moov` first cut in half, `truncated-moov-last` one with `moov` last cut in half, `text`, `random`.
pub fn clip(kind: &str) -> PathBuf {
    let path = fixtures().join(format!("{kind}.bin"));
    if path.exists() {
        return path;
    }
    let tmp = fixtures().join(format!("{kind}.{}.tmp.mp4", rand_u32()));
    let t = tmp.to_str().unwrap();
    match kind {
        "av" => ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "6",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-c:a",
            "aac",
            "-shortest",
            t,
        ]),
        "video" => ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-t",
            "6",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            t,
        ]),
        "long" => tone_clip(&tmp, 30, 220),
        "abr" => ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            // Noise keeps every rendition near its target bitrate, so the ladder's bitrates
            // stay well apart (what a player's ABR logic needs to tell them apart).
            "testsrc2=size=640x360:rate=25,noise=alls=12:allf=t",
            "-t",
            "60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "3M",
            t,
        ]),
        "audio" => ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300",
            "-t",
            "3",
            "-c:a",
            "aac",
            t,
        ]),
        // An MP4 cut in half: with its index (moov) first, or last as cameras and phones
        // write it (a file cut short then has none).
        "truncated" | "truncated-moov-last" => {
            let mut args = vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=25",
                "-t",
                "5",
                "-c:v",
                "libx264",
                "-b:v",
                "800k",
            ];
            if kind == "truncated" {
                args.extend(["-movflags", "+faststart"]);
            }
            args.push(t);
            ffmpeg(&args);
            let bytes = std::fs::read(&tmp).unwrap();
            std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
        }
        // 200 frames whose middle third of the file is zeroed (a damaged disk or transfer):
        // the index is whole, the frames there cannot be decoded.
        "zeroed-middle" => {
            ffmpeg(&[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-frames:v",
                "200",
                "-t",
                "6.67",
                "-g",
                "30",
                "-c:v",
                "libx264",
                "-c:a",
                "aac",
                "-movflags",
                "+faststart",
                t,
            ]);
            let mut bytes = std::fs::read(&tmp).unwrap();
            let n = bytes.len();
            bytes[n / 3..2 * n / 3].fill(0);
            std::fs::write(&tmp, bytes).unwrap();
        }
        "text" => std::fs::write(&tmp, "my holiday video, honest\n".repeat(300)).unwrap(),
        "random" => {
            let bytes: Vec<u8> = (0..200_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            std::fs::write(&tmp, bytes).unwrap();
        }
        other => panic!("unknown clip kind {other}"),
    }
    // A link never replaces: concurrent tests see a whole file or none, and the first one
    // made is the one every test gets. ffmpeg's output differs from run to run (the MP4's
    // creation time, x264's threads), and a rename let a second making replace the bytes a
    // test had uploaded before it uploaded them again (a new id where it expected its own).
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("storing the clip {path:?}: {e}"),
    }
    std::fs::remove_file(&tmp).unwrap();
    path
}

fn rand_u32() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    std::process::id() ^ N.fetch_add(1, Ordering::SeqCst).wrapping_mul(7919)
}

/// A unique node id, so in-process nodes of parallel tests never share actor names.
pub fn node_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}", N.fetch_add(1, Ordering::SeqCst))
}

/// A config for tests: a two-rung ladder small enough for 320x240 clips (240p, 180p), 2 s
/// segments, fast backoff.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::single_node(dir, "127.0.0.1:0".parse().unwrap());
    c.node_id = node_id();
    c.processing.segment_seconds = 2;
    c.processing.preset = "ultrafast".into();
    c.processing.backoff_initial_ms = 50;
    c.processing.backoff_max_ms = 200;
    c.processing.ladder = vec![
        RungConfig {
            name: "240p".into(),
            height: 240,
            video_kbps: 400,
            audio_kbps: 64,
        },
        RungConfig {
            name: "180p".into(),
            height: 180,
            video_kbps: 200,
            audio_kbps: 48,
        },
    ];
    c
}

/// Start a node in this process on a free loopback port.
pub async fn start(config: Config) -> reel::RunningNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    reel::spawn(config, listener).await.expect("node starts")
}

/// PUT a file to `/upload`; returns the status and JSON body.
pub async fn upload(base: &str, file: &Path) -> (u16, Value) {
    let bytes = tokio::fs::read(file).await.unwrap();
    let resp = reqwest::Client::new()
        .put(format!("{base}/upload"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// GET a JSON document.
pub async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The directory (`{rendition}/{attempt}`) a ready video's record serves `rendition` from,
/// read through `GET /videos/{id}`; panics when the record names none.
pub async fn rendition_dir(base: &str, id: &str, rendition: &str) -> String {
    let (_, record) = get_json(&format!("{base}/videos/{id}")).await;
    record["renditions"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == rendition))
        .and_then(|r| r["dir"].as_str())
        .unwrap_or_else(|| panic!("no directory for {rendition} in {record}"))
        .to_string()
}

/// Poll `GET /videos/{id}` until its state is terminal; panics after `deadline`.
pub async fn wait_terminal(base: &str, id: &str, deadline: Duration) -> Value {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let (status, v) = get_json(&format!("{base}/videos/{id}")).await;
        assert_eq!(status, 200, "{v}");
        if matches!(v["state"].as_str(), Some("ready" | "failed")) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "video {id} not done in {deadline:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `cond` until true; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Play a URL to the end with ffmpeg as the client, failing on any decode error.
pub async fn play(url: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i", url, "-f", "null", "-"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .map_err(|_| "ffmpeg did not finish in 120 s".to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// ffprobe a URL: (width, height, number of frames read, duration seconds).
pub async fn probe(url: &str) -> (u64, u64, u64, f64) {
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_streams",
            "-show_format",
        ])
        .args(["-of", "json", url])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    let num = |x: &Value| {
        x.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        s["width"].as_u64().unwrap(),
        s["height"].as_u64().unwrap(),
        num(&s["nb_read_frames"]) as u64,
        num(&v["format"]["duration"]),
    )
}

/// Segment URIs of a media playlist, parsed with m3u8-rs.
pub async fn segments(url: &str) -> Vec<(String, f32)> {
    let text = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    match m3u8_rs::parse_playlist_res(&text).unwrap() {
        m3u8_rs::Playlist::MediaPlaylist(p) => p
            .segments
            .iter()
            .map(|s| (s.uri.clone(), s.duration))
            .collect(),
        _ => panic!("not a media playlist: {url}"),
    }
}

/// Variant stream URIs of a multivariant playlist.
pub async fn variants(url: &str) -> Vec<m3u8_rs::VariantStream> {
    let text = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    match m3u8_rs::parse_playlist_res(&text).unwrap() {
        m3u8_rs::Playlist::MasterPlaylist(p) => p.variants,
        _ => panic!("not a multivariant playlist: {url}"),
    }
}

/// Kinds of events of a video, in order.
pub async fn event_kinds(base: &str, id: &str) -> Vec<Value> {
    let (_, v) = get_json(&format!("{base}/videos/{id}/events")).await;
    v["events"].as_array().cloned().unwrap_or_default()
}

/// The string `field` of each event of `kind` that has one, in order.
pub fn event_fields<'a>(events: &'a [Value], kind: &str, field: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e[field].as_str())
        .collect()
}

/// Count events of `kind`.
pub fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

/// A loopback address whose port is free now, for a node this test starts to bind.
///
/// Drawn above the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 to 60999 by
/// default), never from it: a port the kernel hands out itself (port 0, as this did before)
/// can be handed out again, to another test's outgoing connection, between this call and the
/// node's bind, and the node then cannot start (a cluster test timed out waiting for a node
/// that way). Above the range only explicit binds compete. Falls back to port 0 where that
/// range is too small.
pub fn free_addr() -> SocketAddr {
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().nth(1)?.parse::<u16>().ok())
        .unwrap_or(60_999);
    if u16::MAX - high >= 1_000 {
        let port = free_port_between(high + 1, u16::MAX, |_| true);
        return SocketAddr::from(([127, 0, 0, 1], port));
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A port from `lo` to `hi` (inclusive) that binds on 127.0.0.1 now, that `also_free`
/// accepts, and that no earlier call in this test run gave: drawn at random, checked, and
/// recorded for the whole run. Panics when 1,000 draws find none.
pub fn free_port_between(lo: u16, hi: u16, also_free: impl Fn(u16) -> bool) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let span = u32::from(hi) - u32::from(lo) + 1;
    for _ in 0..1_000 {
        let port = (u32::from(lo) + rand::random::<u32>() % span) as u16;
        if !given.contains(&port) && bindable(port) && also_free(port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port from {lo} to {hi}");
}

/// Whether a listener can bind 127.0.0.1:`port` now (it is released at once).
pub fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A `reel` child process that this test started; killed (by its own PID) when dropped.
pub struct ReelProcess {
    child: std::process::Child,
}

impl ReelProcess {
    /// Start `reel ARGS` in the working directory `cwd`, as a user would from a shell there.
    pub fn start_in(cwd: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        Self::spawn(Some(cwd), args, env, log)
    }

    /// `reel serve --listen ADDR` in `cwd`: the README's command with only the port
    /// changed, so the node keeps its state in `cwd/reel-data` as a user's does.
    pub fn serve_in(cwd: &Path, addr: SocketAddr, log: PathBuf) -> Self {
        Self::start_in(cwd, &["serve", "--listen", &addr.to_string()], &[], log)
    }

    /// Start `reel ARGS` with extra environment, logging stderr to `log`.
    pub fn start(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        Self::spawn(None, args, env, log)
    }

    fn spawn(cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reel"));
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,ractor=warn,ractor_cluster=warn")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("reel binary starts");
        Self { child }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal our own child");
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (bounded) for the process to end by itself: its exit status, or `None` if it still
    /// runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for the process to end: what a `cluster-up` parent needs to
    /// stop its own children. Whether it ended by itself within 30 s (else it is killed).
    pub fn terminate(&mut self) -> bool {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(30)).is_some() {
            return true;
        }
        self.kill9();
        false
    }

    /// SIGSTOP: the process hangs with its sockets open.
    pub fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for ReelProcess {
    fn drop(&mut self) {
        self.resume_quietly();
        self.kill9();
    }
}

impl ReelProcess {
    fn resume_quietly(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    }
}

/// `reel serve --config DIR/cluster.toml --node node-1` for a one-node file written there:
/// `settings` (its top-level keys and tables: storage, `[processing]`, `[limits]`), then the
/// node, on `addr`, with its data directory `DIR/data`; its log goes to `DIR/node.log`.
pub fn serve_one_node(dir: &Path, addr: SocketAddr, settings: &str) -> ReelProcess {
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "{settings}\n[[node]]\nid = \"node-1\"\nhttp = \"{addr}\"\ncluster = \"{}\"\n\
             data_dir = \"data\"\n",
            free_addr()
        ),
    )
    .unwrap();
    ReelProcess::start(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--node",
            "node-1",
        ],
        &[],
        dir.join("node.log"),
    )
}

/// Wait until `GET {base}/health` answers.
pub async fn wait_healthy(base: &str) {
    wait_until(
        &format!("{base} healthy"),
        Duration::from_secs(30),
        || async {
            reqwest::get(format!("{base}/health"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}

/// Start a playback session on the node at `base` (fetch the multivariant playlist); returns
/// the session id from `x-reel-session`.
pub async fn start_session(base: &str, video_id: &str) -> String {
    let master = reqwest::get(format!("{base}/videos/{video_id}/master.m3u8"))
        .await
        .unwrap();
    assert_eq!(master.status(), 200);
    master.headers()["x-reel-session"]
        .to_str()
        .unwrap()
        .to_string()
}

/// What [`check_rendition`] measured of one rendition.
#[derive(Debug, Clone)]
pub struct RenditionFacts {
    /// Rendition name.
    pub name: String,
    /// Picture size of the decoded video, pixels.
    pub width: u64,
    /// Picture size of the decoded video, pixels.
    pub height: u64,
    /// Video frames decoded from init segment + every segment.
    pub frames: u64,
    /// Sum of the media playlist's segment durations, seconds.
    pub duration: f64,
    /// Segments in the media playlist.
    pub segments: usize,
    /// Audio channels, when the rendition has audio.
    pub audio_channels: Option<u64>,
    /// The whole rendition (init segment + every segment) as one fMP4 file, for more checks.
    pub file: PathBuf,
}

async fn ffprobe_json(args: &[&str], file: &Path) -> Value {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .args(["-of", "json"])
        .arg(file)
        .kill_on_drop(true)
        .output()
        .await
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {args:?} {file:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn num(v: &Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .or_else(|| v.as_f64())
        .unwrap_or(f64::NAN)
}

/// Issue 8's media checks of one rendition of a ready video, through the session-less paths:
/// its init segment followed by every segment decodes with `ffmpeg -xerror`; in every segment
/// (init + that segment) the audio and video start within 50 ms of each other. Downloads into
/// `dir`. Returns what it measured; panics (naming the rendition and segment) on a failure.
pub async fn check_rendition(base: &str, id: &str, name: &str, dir: &Path) -> RenditionFacts {
    let root = format!("{base}/videos/{id}/{name}");
    let get = |url: String| async move {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        r.bytes().await.unwrap()
    };
    let init = get(format!("{root}/init.mp4")).await;
    let segs = segments(&format!("{root}/index.m3u8")).await;
    assert!(!segs.is_empty(), "{name}: no segments");
    let whole_path = dir.join(format!("{id}-{name}.mp4"));
    let mut whole = init.to_vec();
    let mut has_audio = None;
    for (k, (uri, _)) in segs.iter().enumerate() {
        let seg = get(format!("{root}/{uri}")).await;
        whole.extend_from_slice(&seg);
        let one = dir.join(format!("{id}-{name}-{k}.mp4"));
        let mut bytes = init.to_vec();
        bytes.extend_from_slice(&seg);
        tokio::fs::write(&one, bytes).await.unwrap();
        let v = ffprobe_json(&["-show_entries", "stream=codec_type,start_time"], &one).await;
        let start = |kind: &str| {
            v["streams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["codec_type"] == kind)
                .map(|s| num(&s["start_time"]))
        };
        let (video, audio) = (start("video"), start("audio"));
        let video = video.unwrap_or_else(|| panic!("{name} segment {k} has no video: {v}"));
        if *has_audio.get_or_insert(audio.is_some()) != audio.is_some() {
            panic!("{name} segment {k}: audio in some segments only: {v}");
        }
        if let Some(audio) = audio {
            assert!(
                (audio - video).abs() < 0.050,
                "{name} segment {k}: audio starts at {audio:.3} s, video at {video:.3} s"
            );
        }
        let _ = tokio::fs::remove_file(&one).await;
    }
    tokio::fs::write(&whole_path, &whole).await.unwrap();
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&whole_path)
        .args(["-f", "null", "-"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{name}: init + segments do not decode cleanly: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = ffprobe_json(
        &[
            "-count_frames",
            "-show_entries",
            "stream=codec_type,width,height,nb_read_frames,channels",
        ],
        &whole_path,
    )
    .await;
    let streams = v["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    let audio = streams.iter().find(|s| s["codec_type"] == "audio");
    RenditionFacts {
        name: name.to_string(),
        width: video["width"].as_u64().unwrap(),
        height: video["height"].as_u64().unwrap(),
        frames: num(&video["nb_read_frames"]) as u64,
        duration: segs.iter().map(|s| s.1 as f64).sum(),
        segments: segs.len(),
        audio_channels: audio.and_then(|a| a["channels"].as_u64()),
        file: whole_path,
    }
}

/// [`check_rendition`] for every rendition a ready video lists, highest first.
pub async fn check_all_renditions(base: &str, id: &str, dir: &Path) -> Vec<RenditionFacts> {
    let (status, v) = get_json(&format!("{base}/videos/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "ready", "{v}");
    let mut out = Vec::new();
    for r in v["renditions"].as_array().expect("renditions") {
        let name = r["name"].as_str().unwrap();
        out.push(check_rendition(base, id, name, dir).await);
    }
    out
}

/// Video frames of stream `stream` (an ffprobe stream specifier: `v:0`, or an index) of a
/// local file, counted by decoding.
pub async fn count_frames(file: &Path, stream: &str) -> u64 {
    let v = ffprobe_json(
        &[
            "-count_frames",
            "-select_streams",
            stream,
            "-show_entries",
            "stream=nb_read_frames",
        ],
        file,
    )
    .await;
    num(&v["streams"][0]["nb_read_frames"]) as u64
}

/// Run ffmpeg with `args` (quiet, overwriting), returning stderr; panics if it fails.
pub async fn ffmpeg_out(args: &[&str]) -> String {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("ffmpeg runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ffmpeg {args:?}: {err}");
    err
}

/// tus creation (`POST /files/`) of an upload of `len` bytes; returns its absolute URL.
pub async fn tus_create(base: &str, len: usize) -> Result<String, (u16, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{base}/files/"))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len.to_string())
        .send()
        .await
        .unwrap();
    if r.status() != 201 {
        let status = r.status().as_u16();
        return Err((status, r.json().await.unwrap_or_default()));
    }
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    Ok(if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        loc
    })
}

/// tus `HEAD` of an upload (its `Upload-Offset` and `Upload-Length`, or `404`).
pub async fn tus_head(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .head(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap()
}

/// tus `PATCH` of `bytes` at `offset` (no checksum).
pub async fn tus_patch(url: &str, offset: usize, bytes: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .patch(url)
        .header("Tus-Resumable", "1.0.0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", offset.to_string())
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// The SHA-256 of `b`, in lower-case hex.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// The stored source of video `id` in the local object store of data directory `dir`.
pub fn stored_source(dir: &Path, id: &str) -> Vec<u8> {
    std::fs::read(dir.join("objects/sources").join(id)).unwrap()
}

/// What a test proxy ([`relay_proxy`]) does with `n` bytes a client sent.
pub enum Relay {
    /// Send them on.
    Forward,
    /// Send on this many of them, then close the connection (a cut).
    Cut(usize),
    /// Send on this many of them, then hang as a stopped node does: read and forward nothing
    /// more, on any connection, old or new, and keep them all open.
    Hang(usize),
}

/// A TCP proxy on a loopback port to `target`, both ways. `decide(before, n)` says what
/// becomes of each `n` bytes a client sends, `before` bytes having gone to the target before
/// them over all connections. Returns its address and the bytes it forwarded to the target.
pub async fn relay_proxy(
    target: SocketAddr,
    decide: impl Fn(u64, usize) -> Relay + Send + Sync + 'static,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarded = Arc::new(AtomicU64::new(0));
    let counter = forwarded.clone();
    let decide = Arc::new(decide);
    let (hang, hung) = tokio::sync::watch::channel(false);
    let hang = Arc::new(hang);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((client, _)) = listener.accept().await {
            if *hung.borrow() {
                held.push(client); // accepted, never read: as a stopped process's backlog
                continue;
            }
            let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (decide, forwarded) = (decide.clone(), forwarded.clone());
            let (hang, mut hung) = (hang.clone(), hung.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                // Client to target; true when the proxy cut the connection.
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = uw.shutdown().await;
                                return false;
                            }
                            Ok(n) => n,
                        };
                        let relay = decide(forwarded.load(Ordering::SeqCst), n);
                        let keep = match relay {
                            Relay::Forward => n,
                            Relay::Cut(keep) | Relay::Hang(keep) => keep.min(n),
                        };
                        let wrote = uw.write_all(&buf[..keep]).await.is_ok();
                        forwarded.fetch_add(keep as u64, Ordering::SeqCst);
                        match relay {
                            Relay::Forward if wrote => {}
                            Relay::Forward => return false,
                            Relay::Cut(_) => return true,
                            Relay::Hang(_) => {
                                let _ = hang.send(true);
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                };
                // Target to client, until the proxy hangs.
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        tokio::select! {
                            biased;
                            _ = until_hung(&mut hung) => std::future::pending::<()>().await,
                            r = ur.read(&mut buf) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(n) => if cw.write_all(&buf[..n]).await.is_err() { return },
                            },
                        }
                    }
                };
                tokio::pin!(down);
                tokio::select! {
                    cut = up => if !cut { down.await },
                    _ = &mut down => {}
                }
            });
        }
    });
    (addr, counter)
}

/// Returns once the proxy has hung.
async fn until_hung(hung: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = hung.wait_for(|h| *h).await;
}

/// A [`relay_proxy`] that hangs once `hang_after` bytes have gone to `target`: as a stopped
/// node, it then reads and forwards nothing more, on any connection, and keeps them all open.
/// Returns its address and the bytes it forwarded to the target.
pub async fn hanging_proxy(
    target: SocketAddr,
    hang_after: u64,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    relay_proxy(target, move |before, n| {
        if before + n as u64 <= hang_after {
            Relay::Forward
        } else {
            Relay::Hang(hang_after.saturating_sub(before) as usize)
        }
    })
    .await
}

/// Files under `dir` (relative paths), recursively.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}
