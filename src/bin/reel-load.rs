//! `reel-load`: a load generator for issue 11's P3. It opens N playback sessions on one node,
//! each a player on its own keep-alive connection: the multivariant playlist (which opens the
//! session), the media playlist of one rendition, then one segment per segment duration, paced
//! in real time as a player does, looping over the video. As a browser does, a player whose
//! idle connection the node closed (a node near its connection cap closes idle ones,
//! `reel::http::listener`) lets it go at once and opens a new one for its next request, and
//! retries a request once on a new connection when its reused one was closed before any
//! answer came (RFC 9112 section 9.3.1); that request's latency then counts the new
//! connection. Only the steady state is timed: no request starts after it, and every player
//! holds its session until it ends. Prints sessions held, requests a second, latency
//! percentiles, requests over 50 ms (and the most in one second), errors, and
//! (given the node's PID) its RSS, RSS per session and CPU time per request (the whole
//! process, and its playback-log writer thread), its own CPU (the players share the node's
//! cores on one machine), and the machine's TCP memory over the steady state.
//!
//! Loopback only by intent: it refuses a server that is not on 127.0.0.0/8. Bounded: it stops
//! after `--seconds`. Used by `scripts/bench-sessions`.
//!
//! ```text
//! reel-load --server http://127.0.0.1:8080 --video ID --sessions 28000 --seconds 60 \
//!           --rendition 240p --node-pid 1234
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;

/// A player's read buffer, bytes: enough for a few reads per 240p segment, small enough
/// that 28,000 players' buffers fit in memory (1.75 GiB).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The command line.
#[derive(Parser, Debug)]
#[command(about = "Open N paced playback sessions against one reel node (loopback only)")]
struct Args {
    /// The node, `http://127.0.0.1:PORT`.
    #[arg(long)]
    server: String,
    /// A ready video's id.
    #[arg(long)]
    video: String,
    /// Sessions (players) to open, each on its own connection.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// How long to play, seconds (after the ramp).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds over which sessions start, evenly.
    #[arg(long, default_value_t = 20)]
    ramp: u64,
    /// The rendition every player plays.
    #[arg(long, default_value = "240p")]
    rendition: String,
    /// The node's process id, to read its RSS.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Source addresses to spread connections over (127.0.0.2, .3, ...), so ephemeral ports
    /// of one address do not run out.
    #[arg(long, default_value_t = 16)]
    source_addresses: u8,
    /// Processes to spread the players over: each process's open connections count against
    /// its own open-file limit (20,000 on the bench machine, which root cannot raise), so
    /// 28,000 players need two. The first process starts the others and merges their figures.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Run only the players `i` with `i % processes == shard` and write the figures as JSON
    /// to `--report` (set by the first process for the others).
    #[arg(long, hide = true)]
    shard: Option<usize>,
    /// Where a shard writes its figures.
    #[arg(long, hide = true)]
    report: Option<std::path::PathBuf>,
}

/// One process's figures over the steady state, merged by the first process.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Report {
    held_at_ramp: u64,
    held_min: u64,
    requests: u64,
    bytes: u64,
    errors: u64,
    closed_by_node: u64,
    reconnects: u64,
    retries: u64,
    first_errors: Vec<String>,
    latencies_us: Vec<u32>,
    latencies_new_us: Vec<u32>,
    /// Requests of the steady state slower than [`SLOW_US`], by the second they started in.
    slow_by_second: Vec<u64>,
}

impl Report {
    fn merge(mut self, other: Report) -> Report {
        self.held_at_ramp += other.held_at_ramp;
        self.held_min += other.held_min;
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.closed_by_node += other.closed_by_node;
        self.reconnects += other.reconnects;
        self.retries += other.retries;
        self.first_errors.extend(other.first_errors);
        self.first_errors.truncate(5);
        self.latencies_us.extend(other.latencies_us);
        self.latencies_new_us.extend(other.latencies_new_us);
        if self.slow_by_second.len() < other.slow_by_second.len() {
            self.slow_by_second.resize(other.slow_by_second.len(), 0);
        }
        for (a, b) in self.slow_by_second.iter_mut().zip(other.slow_by_second) {
            *a += b;
        }
        self
    }
}

/// A request slower than this, microseconds, is counted by the second it started in, to tell
/// a tail spread over the run from one burst.
const SLOW_US: u32 = 50_000;

struct Stats {
    /// When the steady state begins: requests started before it (the ramp) are not timed.
    steady: Instant,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Idle connections the node closed.
    closed_by_node: AtomicU64,
    /// New connections opened for a request after the first.
    reconnects: AtomicU64,
    /// Requests sent again on a new connection.
    retries: AtomicU64,
    bytes: AtomicU64,
    held: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// The latencies of requests that opened a new connection.
    latencies_new_us: Mutex<Vec<u32>>,
    first_errors: Mutex<Vec<String>>,
    /// Requests slower than [`SLOW_US`], by the second of the steady state they started in.
    slow_by_second: Vec<AtomicU64>,
}

impl Stats {
    fn new(steady: Instant, end: Instant) -> Stats {
        Stats {
            steady,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed_by_node: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            held: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
            latencies_new_us: Mutex::new(Vec::new()),
            first_errors: Mutex::new(Vec::new()),
            slow_by_second: (0..=(end - steady).as_secs())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_errors.lock().unwrap();
        if f.len() < 5 {
            f.push(what);
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The kernel's TCP memory for the whole machine now, bytes (`/proc/net/sockstat`, `TCP:
/// ... mem N`, in pages of 4 KiB).
fn tcp_memory_bytes() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    Some(words.next()?.parse::<u64>().ok()? * 4096)
}

/// CPU time (user + system) of `/proc/{pid}/stat` or `/proc/{pid}/task/{tid}/stat`, in clock
/// ticks (`getconf CLK_TCK`, 100 on Linux).
fn cpu_ticks(stat_path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The node's CPU ticks so far: the whole process, and its threads named `playback-log`
/// (the playback log's writer, `storage::playback`).
fn node_cpu(pid: u32) -> Option<(u64, u64)> {
    let all = cpu_ticks(&format!("/proc/{pid}/stat"))?;
    let mut writer = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == "playback-log" {
            writer += cpu_ticks(&dir.join("stat").to_string_lossy()).unwrap_or(0);
        }
    }
    Some((all, writer))
}

/// Why a GET failed: before any of its answer came (the connection was closed or refused
/// the request; a reused connection may be retried), or during its answer's body.
enum GetError {
    BeforeAnswer(String),
    Answer(String),
}

/// What a player keeps of a response body: all of it (a playlist), or only its length (a
/// segment).
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    Body,
    Length,
}

/// A response as a player saw it.
struct Response {
    /// The HTTP status code.
    status: u16,
    /// The `X-Reel-Session` header: the session the multivariant playlist opened.
    session: Option<String>,
    /// The body, when [`Keep::Body`]; empty otherwise.
    body: Vec<u8>,
    /// The body's length, bytes.
    len: usize,
    /// It came on a connection opened for it (the node had closed the player's idle one).
    new_connection: bool,
}

/// One GET on the player's connection.
///
/// A segment's body is counted frame by frame and dropped, as a player hands it to its
/// decoder: gathering 200 kB into a fresh buffer for every request made the load generator,
/// not the node, the bottleneck (a new buffer that size is a fresh mapping from the
/// allocator, and the kernel zeroes each page of it as the socket's bytes land;
/// docs/performance.md, P3).
async fn get(
    conn: &mut SendRequest<Empty<Bytes>>,
    authority: &str,
    path: &str,
    keep: Keep,
) -> Result<Response, GetError> {
    let req = hyper::Request::get(path)
        .header("host", authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| GetError::BeforeAnswer(e.to_string()))?;
    conn.ready()
        .await
        .map_err(|e| GetError::BeforeAnswer(format!("connection: {e}")))?;
    let resp = conn
        .send_request(req)
        .await
        .map_err(|e| GetError::BeforeAnswer(format!("{path}: {e}")))?;
    let status = resp.status().as_u16();
    let session = resp
        .headers()
        .get("x-reel-session")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| GetError::Answer(format!("{path}: body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if keep == Keep::Body {
                kept.extend_from_slice(&data);
            }
        }
    }
    Ok(Response {
        status,
        session,
        body: kept,
        len,
        new_connection: false,
    })
}

/// The media segments and their durations of a media playlist (URIs relative to it).
fn segments(playlist: &[u8]) -> Vec<(String, f64)> {
    let text = String::from_utf8_lossy(playlist);
    let mut out = Vec::new();
    let mut duration = 4.0;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            duration = d
                .trim_end_matches(',')
                .split(',')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(4.0);
        } else if !line.is_empty() && !line.starts_with('#') {
            out.push((line.to_string(), duration));
        }
    }
    out
}

/// A player's connection: the request handle, and the task driving it (it ends when the
/// node closes the connection).
struct Conn {
    send: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

/// Where a player's connections go: from its loopback source address to the node, with the
/// `Host` the node is asked as.
struct Target {
    source: IpAddr,
    server: SocketAddr,
    /// `server` as a `Host` header value, formed once.
    authority: String,
}

/// Open a connection to `target`.
async fn connect(target: &Target) -> Result<Conn, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(target.source, 0))
        .map_err(|e| format!("bind {}: {e}", target.source))?;
    let stream = socket
        .connect(target.server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    // One read buffer of a fixed size a player, reused for every read: hyper's adaptive
    // buffer grows to 400 kB and is allocated afresh as segment bodies are split off it,
    // and the kernel then zeroes every page of each new buffer (docs/performance.md, P3).
    let (send, driver) = hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(READ_BUFFER_BYTES))
        .handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(Conn { send, driver })
}

/// One GET as a player makes it: on its connection, or on a new one when the node closed it
/// (counted as a reconnect), and once more on a new one when a reused connection fails before
/// any answer (counted as a retry); [`Response::new_connection`] says which.
async fn request(
    conn: &mut Option<Conn>,
    target: &Target,
    path: &str,
    keep: Keep,
    stats: &Stats,
) -> Result<Response, String> {
    let mut retried = false;
    loop {
        let reused = conn.is_some();
        if !reused {
            *conn = Some(connect(target).await?);
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let c = conn.as_mut().expect("connected above");
        match get(&mut c.send, &target.authority, path, keep).await {
            Ok(r) => {
                return Ok(Response {
                    new_connection: !reused,
                    ..r
                })
            }
            Err(GetError::BeforeAnswer(_)) if reused && !retried => {
                retried = true;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                *conn = None;
            }
            Err(GetError::BeforeAnswer(e) | GetError::Answer(e)) => {
                *conn = None;
                return Err(e);
            }
        }
    }
}

async fn player(
    i: usize,
    args: Arc<Args>,
    server: SocketAddr,
    start: Instant,
    end: Instant,
    stats: Arc<Stats>,
) {
    tokio::time::sleep_until(start.into()).await;
    let target = Target {
        source: IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % args.source_addresses.max(1) as usize) as u8,
        )),
        server,
        authority: server.to_string(),
    };
    let mut conn = match connect(&target).await {
        Ok(c) => Some(c),
        Err(e) => return stats.error(e),
    };
    let timed = |stats: &Stats, t: Instant, r: &Response| {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(r.len as u64, Ordering::Relaxed);
        // Requests of the ramp are not timed.
        let Some(since) = t.checked_duration_since(stats.steady) else {
            return;
        };
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        stats.latencies_us.lock().unwrap().push(us);
        if r.new_connection {
            stats.latencies_new_us.lock().unwrap().push(us);
        }
        if us > SLOW_US {
            if let Some(n) = stats.slow_by_second.get(since.as_secs() as usize) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let master = format!("/videos/{}/master.m3u8", args.video);
    let t = Instant::now();
    let session = match request(&mut conn, &target, &master, Keep::Body, &stats).await {
        Ok(
            r @ Response {
                status: 200,
                session: Some(_),
                ..
            },
        ) => {
            timed(&stats, t, &r);
            r.session.expect("matched above")
        }
        Ok(r) => return stats.error(format!("master: {}", r.status)),
        Err(e) => return stats.error(e),
    };
    let base = format!("/videos/{}/s/{session}/{}/", args.video, args.rendition);
    let t = Instant::now();
    let index = format!("{base}index.m3u8");
    let media = match request(&mut conn, &target, &index, Keep::Body, &stats).await {
        Ok(r) if r.status == 200 => {
            timed(&stats, t, &r);
            segments(&r.body)
        }
        Ok(r) => return stats.error(format!("media playlist: {}", r.status)),
        Err(e) => return stats.error(e),
    };
    if media.is_empty() {
        return stats.error("an empty media playlist".into());
    }
    stats.held.fetch_add(1, Ordering::Relaxed);
    let mut k = i % media.len();
    let mut next = Instant::now();
    // No request starts after the steady state ends: the last ones would time the players'
    // leaving, not the node (below).
    while next < end {
        // Wait for the next segment's time; let the connection go as soon as the node
        // closes it, as a browser does, so that its descriptor is free meanwhile.
        loop {
            let Some(c) = conn.as_mut() else {
                tokio::time::sleep_until(next.into()).await;
                break;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => break,
                _ = &mut c.driver => {
                    stats.closed_by_node.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
        let (uri, duration) = &media[k];
        next += Duration::from_secs_f64(*duration);
        let t = Instant::now();
        let path = format!("{base}{uri}");
        match request(&mut conn, &target, &path, Keep::Length, &stats).await {
            Ok(r) if r.status == 200 => timed(&stats, t, &r),
            Ok(r) => stats.error(format!("segment {uri}: {}", r.status)),
            Err(e) => {
                stats.error(e);
                break;
            }
        }
        k = (k + 1) % media.len();
    }
    // Hold the session, and its connection, until the steady state ends, so that every
    // player leaves after it, at once. When players left as their own last segment's time
    // passed the end, 28,000 connections closed over the window's last 4 s while the others
    // were still timed: those seconds held 9,000 to 14,000 requests over 50 ms and set p99
    // at 137 to 587 ms, where the rest of the run had it under 20 ms (docs/performance.md,
    // P3).
    tokio::time::sleep_until(end.into()).await;
    stats.held.fetch_sub(1, Ordering::Relaxed);
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    // The same runtime as the node's: with tokio's default I/O batches, 19,000 connections
    // ready at once queue unfairly in the load generator itself, and its measured latency
    // grows with its own backlog rather than the node's (docs/performance.md, P3).
    reel::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let url = url::Url::parse(&args.server)?;
    let host: IpAddr = url.host_str().unwrap_or("").parse()?;
    anyhow::ensure!(
        host.is_loopback(),
        "reel-load only sends to loopback addresses"
    );
    let server = SocketAddr::new(host, url.port().unwrap_or(80));
    let processes = args.processes.max(1);
    // The first process starts the others, each with its share of the players.
    let mut children = Vec::new();
    let reports = std::env::temp_dir().join(format!("reel-load-{}", std::process::id()));
    if args.shard.is_none() && processes > 1 {
        std::fs::create_dir_all(&reports)?;
        for shard in 1..processes {
            let report = reports.join(format!("shard-{shard}.json"));
            let child = std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .arg("--shard")
                .arg(shard.to_string())
                .arg("--report")
                .arg(&report)
                .stdout(std::process::Stdio::null())
                .spawn()?;
            children.push((child, report));
        }
    }
    let shard = args.shard.unwrap_or(0);
    let rss0 = args.node_pid.and_then(rss_kib);
    let t0 = Instant::now();
    let ramp = Duration::from_secs(args.ramp);
    // The steady state starts 2 s after the last player started (its playlists fetched).
    let steady = t0 + ramp + Duration::from_secs(2);
    let end = steady + Duration::from_secs(args.seconds);
    let stats = Arc::new(Stats::new(steady, end));
    let mut tasks = Vec::with_capacity(args.sessions / processes + 1);
    for i in (shard..args.sessions).step_by(processes) {
        let start = t0 + ramp.mul_f64(i as f64 / args.sessions.max(1) as f64);
        tasks.push(tokio::spawn(player(
            i,
            args.clone(),
            server,
            start,
            end,
            stats.clone(),
        )));
    }
    // Measure the steady state only.
    tokio::time::sleep_until(steady.into()).await;
    let (req0, held_at_ramp) = (
        stats.requests.load(Ordering::Relaxed),
        stats.held.load(Ordering::Relaxed),
    );
    let mut rss_peak = args.node_pid.and_then(rss_kib).unwrap_or(0);
    let cpu0 = args.node_pid.and_then(node_cpu);
    let own0 = cpu_ticks("/proc/self/stat");
    let mut held_min = held_at_ramp;
    let mut tcp_peak = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Players leave when the steady state ends: a sample in its last second could see
        // them go.
        if Instant::now() + Duration::from_secs(1) < end {
            held_min = held_min.min(stats.held.load(Ordering::Relaxed));
        }
        rss_peak = rss_peak.max(args.node_pid.and_then(rss_kib).unwrap_or(0));
        tcp_peak = tcp_peak.max(tcp_memory_bytes().unwrap_or(0));
    }
    let requests = stats.requests.load(Ordering::Relaxed) - req0;
    let rss_end = args.node_pid.and_then(rss_kib);
    let cpu_end = args.node_pid.and_then(node_cpu);
    let own_end = cpu_ticks("/proc/self/stat");
    for t in tasks {
        let _ = t.await;
    }
    let mut report = Report {
        held_at_ramp,
        held_min,
        requests,
        bytes: stats.bytes.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        closed_by_node: stats.closed_by_node.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        first_errors: std::mem::take(&mut *stats.first_errors.lock().unwrap()),
        latencies_us: std::mem::take(&mut *stats.latencies_us.lock().unwrap()),
        latencies_new_us: std::mem::take(&mut *stats.latencies_new_us.lock().unwrap()),
        slow_by_second: stats
            .slow_by_second
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec(&report)?)?;
        return Ok(());
    }
    let mut own_children = 0;
    for (mut child, path) in children {
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "a player process ended with {status}");
        report = report.merge(serde_json::from_slice(&std::fs::read(&path)?)?);
        own_children += 1;
    }
    let _ = std::fs::remove_dir_all(&reports);
    let mut lat = std::mem::take(&mut report.latencies_us);
    lat.sort_unstable();
    println!(
        "sessions: {} asked, {} held when the steady state began, at least {} held throughout{}",
        args.sessions,
        report.held_at_ramp,
        report.held_min,
        if own_children > 0 {
            format!(" (players in {} processes)", own_children + 1)
        } else {
            String::new()
        }
    );
    println!(
        "steady state {} s: {} requests ({:.0} req/s, {:.1} MB/s), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.seconds,
        report.requests,
        report.requests as f64 / args.seconds as f64,
        report.bytes as f64 / 1e6 / (t0.elapsed().as_secs_f64()),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    let mut fresh = std::mem::take(&mut report.latencies_new_us);
    fresh.sort_unstable();
    println!(
        "  of which on a connection opened for the request: {} ({:.0} %), p50 {:.2} ms, p99 {:.2} ms",
        fresh.len(),
        100.0 * fresh.len() as f64 / lat.len().max(1) as f64,
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
    );
    let slow: u64 = report.slow_by_second.iter().sum();
    println!(
        "  over {} ms: {} ({:.3} %), at most {} started in one second",
        SLOW_US / 1000,
        slow,
        100.0 * slow as f64 / lat.len().max(1) as f64,
        report.slow_by_second.iter().max().copied().unwrap_or(0),
    );
    println!("errors: {}", report.errors);
    for e in &report.first_errors {
        println!("  e.g. {e}");
    }
    println!(
        "connections: {} idle ones closed by the node, {} opened again for a request, {} requests retried on a new one (whole run)",
        report.closed_by_node, report.reconnects, report.retries,
    );
    let requests = report.requests;
    let held_at_ramp = report.held_at_ramp;
    if let (Some(a), Some(b)) = (rss0, rss_end) {
        println!(
            "node RSS: {:.0} MiB before, {:.0} MiB at the end, peak {:.0} MiB; {:.1} KiB per held session",
            a as f64 / 1024.0,
            b as f64 / 1024.0,
            rss_peak as f64 / 1024.0,
            (b.saturating_sub(a)) as f64 / held_at_ramp.max(1) as f64
        );
    }
    if let (Some((a, wa)), Some((b, wb))) = (cpu0, cpu_end) {
        // Clock ticks of 10 ms (CLK_TCK is 100 on Linux).
        let us = |ticks: u64| ticks as f64 * 10_000.0;
        let per = |ticks: u64| us(ticks) / requests.max(1) as f64;
        println!(
            "node CPU over the steady state: {:.0} % of one core, {:.0} us per request; its \
             playback-log writer {:.0} % of one core, {:.1} us per request",
            us(b - a) / 1e4 / args.seconds as f64,
            per(b - a),
            us(wb - wa) / 1e4 / args.seconds as f64,
            per(wb - wa),
        );
    }
    if let (Some(a), Some(b)) = (own0, own_end) {
        // The players' own cost, to tell a node that falls behind from a load generator that
        // does (they share the machine's cores here).
        println!(
            "players (this load generator's first process) over the steady state: {:.0} % of one core",
            (b - a) as f64 / args.seconds as f64
        );
    }
    // Sockets' bytes waiting in the kernel, machine-wide: at 1.4 GB/s, every 14 MiB is 10 ms
    // of queueing somewhere between the node's writes and the players' reads.
    println!(
        "machine TCP memory over the steady state: peak {:.0} MiB",
        tcp_peak as f64 / 1048576.0
    );
    Ok(())
}
