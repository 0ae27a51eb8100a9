//! The client commands: `reel upload FILE` (tus 1.0.0, resumable), `reel status VIDEO_ID` and
//! `reel reprocess VIDEO_ID`.
//!
//! Each talks to a list of servers ([`Servers`]): the nodes of one cluster, any of which serves
//! any upload and any video. A request that cannot reach one (refused connection, no answer, an
//! upload that stopped moving) goes to the next, so a client keeps working when the node it
//! talked to dies or hangs.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// A client error, printed for the user.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server cannot be reached.
    #[error("cannot reach {server}: {message}")]
    Connect {
        /// The server URL.
        server: String,
        /// Why.
        message: String,
    },
    /// No server URL was given.
    #[error("no server URL given")]
    NoServer,
    /// The server refused the request.
    #[error("the server answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
    },
}

fn connect_err(server: &str, e: reqwest::Error) -> ClientError {
    ClientError::Connect {
        server: server.to_string(),
        message: e.to_string(),
    }
}

async fn json_or_refused(resp: reqwest::Response) -> Result<Value, ClientError> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        Err(ClientError::Refused {
            status: status.as_u16(),
            message: body["error"].as_str().unwrap_or("no message").to_string(),
        })
    }
}

/// [`UploadOptions::stall`]'s default, and how long `reel status` waits for an answer: 30 s.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);

/// How `reel upload` sends a file.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Bytes per `PATCH`. Default: the whole file in one `PATCH`, as tus-js-client sends by
    /// default. A cut `PATCH` costs nothing already sent (the server keeps the bytes that
    /// arrived, and the client resumes from the offset `HEAD` gives), and a file sent in one
    /// part is renamed into place by the server, where parts would be joined by copying them.
    pub chunk_bytes: u64,
    /// Retries after a failure (dropped connection, 5xx, 423) before giving up; each retry
    /// first asks the server for the offset (`HEAD`). Default 8.
    pub retries: u32,
    /// First retry delay (default 500 ms); doubles per retry up to 8 s.
    pub backoff: Duration,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// How long a server may go without answering before the client takes it for unreachable
    /// and goes to the next server (default 30 s, Uppy's `timeout`): a `PATCH` that sends no
    /// byte for this long (as Uppy's `ProgressTimeout`, which stops counting once the body
    /// has gone: the server may then take minutes to join and hash a large upload); a
    /// `PATCH` whose body has gone and whose answer has not come for this long, when the
    /// server's `/health` then goes unanswered for as long again; any other request not
    /// answered within it.
    pub stall: Duration,
    /// Where unfinished uploads are remembered (`{first server} {sha256}` → upload URL, JSON), so
    /// running `reel upload` again on the same file after the client itself was stopped resumes
    /// instead of starting over. Default `$XDG_CACHE_HOME/reel/uploads.json` (or
    /// `~/.cache/reel/uploads.json`); `None` remembers nothing.
    pub resume_file: Option<std::path::PathBuf>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: u64::MAX,
            retries: 8,
            backoff: Duration::from_millis(500),
            progress: true,
            stall: DEFAULT_STALL,
            resume_file: std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|d| d.join("reel").join("uploads.json")),
        }
    }
}

/// The remembered unfinished uploads (best effort: an unreadable file is an empty one).
fn read_resume(file: &Path) -> serde_json::Map<String, Value> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn remember(file: Option<&Path>, key: &str, url: Option<&str>) {
    let Some(file) = file else { return };
    let mut map = read_resume(file);
    match url {
        Some(u) => map.insert(key.to_string(), Value::String(u.to_string())),
        None => map.remove(key),
    };
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = file.with_extension("json.tmp");
    if std::fs::write(&tmp, Value::Object(map).to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, file);
    }
}

fn file_err(file: &Path) -> impl Fn(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::File {
        path: file.display().to_string(),
        source,
    }
}

/// SHA-256 of a file, lowercase hex, read in 1 MiB blocks.
pub async fn sha256_file(file: &Path) -> Result<String, ClientError> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(file).await.map_err(file_err(file))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(file_err(file))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn header_str(resp: &reqwest::Response, name: &str) -> Option<String> {
    Some(resp.headers().get(name)?.to_str().ok()?.to_string())
}

/// What a failed request means for the upload loop.
enum Failure {
    /// Worth a retry after asking the offset (network, 5xx, 409, 423). `silent`: the server
    /// said nothing for the stall bound, so the next server is asked at once. After any other
    /// failure (a refused or cut connection too: a stale pooled connection is cut as well) the
    /// offset is asked of the same server first, and the next only if that fails.
    Retry { why: String, silent: bool },
    /// The server refused the file; retrying cannot help.
    Fatal(ClientError),
}

async fn refused(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    ClientError::Refused {
        status,
        message: body["error"].as_str().unwrap_or("no message").to_string(),
    }
}

/// Upload `file` with tus 1.0.0:
///
/// 1. compute the file's SHA-256 and create the upload with `Upload-Metadata` `filename` and
///    `sha256`: when the server already holds those bytes it answers with the full offset and
///    the existing video, and nothing is sent (dedupe before transfer);
/// 2. `PATCH` the rest of the file (in chunks of `chunk_bytes`, by default one), drawing a
///    progress bar;
/// 3. on a dropped connection, a 5xx, `409` or `423`, ask `HEAD` for the offset and resume
///    there, with exponential backoff, at most `retries` times in a row. When the server could
///    not be reached (refused, or silent for `stall`: [`UploadOptions::stall`]) the next of
///    `servers` is asked instead (tus 1.0.0 section "Core Protocol": the upload URL's path is
///    the same on every node of a reel cluster, and any node serves it);
/// 4. if the client itself was stopped, the next `reel upload` of the same file with the same
///    first server finds the upload in `resume_file` and resumes it.
///
/// `servers`: base URLs of nodes of one cluster, tried in order.
///
/// Returns the JSON the rest of the CLI prints: `video_id`, `state`, `duplicate`, and
/// `upload` (the upload's URL on the server that finished it).
///
/// Errors: no server given; the file cannot be read; no server can be reached after the
/// retries; the server refused the file (e.g. `415`: not a video, `413`: too large).
pub async fn upload_with<S: AsRef<str>>(
    servers: &[S],
    file: &Path,
    opts: &UploadOptions,
) -> Result<Value, ClientError> {
    let mut servers = Servers::new(servers)?;
    let len = tokio::fs::metadata(file)
        .await
        .map_err(file_err(file))?
        .len();
    let sha256 = sha256_file(file).await?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let filename = file
        .file_name()
        .map(|n| n.to_string_lossy().replace([',', ' '], "_"))
        .unwrap_or_default();
    let mut metadata = format!("sha256 {}", b64(&sha256));
    if !filename.is_empty() {
        metadata.push_str(&format!(",filename {}", b64(&filename)));
    }
    let client = reqwest::Client::new();
    let stall = opts.stall;
    let resume_key = format!("{} {sha256}", servers.first());
    let resume_file = opts.resume_file.as_deref();
    // An unfinished upload of these bytes, from an earlier run of the client? Its URL's path
    // is asked on the server that gave it first, then on the others.
    let remembered = resume_file
        .map(read_resume)
        .and_then(|map| {
            map.get(&resume_key)
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .and_then(|u| reqwest::Url::parse(&u).ok());
    let mut earlier = None;
    if let Some(url) = remembered {
        let origin = url.origin().ascii_serialization();
        servers.prefer(&origin);
        let path = upload_path(&url);
        if let Some(r) = head_any(&client, &mut servers, &path, stall).await {
            if r.status().is_success() && header_u64(&r, "upload-length") == Some(len) {
                earlier = Some((path, r));
            }
        }
    }
    let (path, resp) = match earlier {
        Some(found) => found,
        None => {
            // Creation goes to the first server that answers.
            let resp = send_in_turn(&mut servers, |base| {
                client
                    .post(format!("{base}/files/"))
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Length", len)
                    .header("Upload-Metadata", &metadata)
                    .timeout(stall)
            })
            .await
            .map_err(|e| connect_err(servers.current(), e))?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(refused(resp).await);
            }
            let location = header_str(&resp, "location").ok_or_else(|| ClientError::Refused {
                status: 201,
                message: "the server sent no Location".into(),
            })?;
            let url = reqwest::Url::parse(servers.current())
                .and_then(|base| base.join(&location))
                .map_err(|e| ClientError::Refused {
                    status: 201,
                    message: format!("bad Location {location}: {e}"),
                })?;
            (upload_path(&url), resp)
        }
    };
    let mut offset = header_u64(&resp, "upload-offset").unwrap_or(0);
    let mut video = header_str(&resp, "reel-video-id");
    let mut state = header_str(&resp, "reel-video-state");
    let duplicate = resp.status() == reqwest::StatusCode::CREATED;
    if offset == len && video.is_some() {
        remember(resume_file, &resume_key, None);
        return Ok(serde_json::json!({
            "video_id": video, "state": state, "duplicate": duplicate,
            "upload": servers.url(&path),
        }));
    }
    remember(resume_file, &resume_key, Some(&servers.url(&path)));
    let bar = if opts.progress {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(offset);
    let mut failures = 0u32;
    while video.is_none() {
        let url = servers.url(&path);
        let health = servers.url("/health");
        let attempt: Result<(), Failure> = async {
            let resp = patch_chunk(
                &client,
                &url,
                &health,
                file,
                (offset, len, opts.chunk_bytes),
                stall,
                &bar,
            )
            .await?;
            let status = resp.status();
            if status == reqwest::StatusCode::NO_CONTENT {
                offset = header_u64(&resp, "upload-offset").unwrap_or(offset);
                video = header_str(&resp, "reel-video-id");
                state = header_str(&resp, "reel-video-state");
                return Ok(());
            }
            if status.is_server_error()
                || status == reqwest::StatusCode::CONFLICT
                || status == reqwest::StatusCode::LOCKED
                || status.as_u16() == 460
            {
                return Err(Failure::Retry {
                    why: format!("the server answered {status}"),
                    silent: false,
                });
            }
            Err(Failure::Fatal(refused(resp).await))
        }
        .await;
        match attempt {
            Ok(()) => {
                failures = 0;
                bar.set_position(offset);
            }
            Err(Failure::Fatal(e)) => {
                bar.abandon();
                return Err(e);
            }
            Err(Failure::Retry { why, silent }) => {
                failures += 1;
                if failures > opts.retries {
                    bar.abandon();
                    return Err(ClientError::Connect {
                        server: servers.current().to_string(),
                        message: format!("gave up after {} retries: {why}", opts.retries),
                    });
                }
                let delay = opts
                    .backoff
                    .saturating_mul(1 << (failures - 1).min(5))
                    .min(Duration::from_secs(8));
                say(
                    &bar,
                    format!("upload interrupted at {offset} bytes ({why}); resuming in {delay:?}"),
                );
                let before = servers.current().to_string();
                if silent {
                    servers.fail_over();
                }
                tokio::time::sleep(delay).await;
                // Ask where the upload stands (what the server kept), and go on from there.
                let asked = head_any(&client, &mut servers, &path, stall).await;
                if servers.current() != before {
                    say(&bar, format!("going on through {}", servers.current()));
                }
                if let Some(resp) = asked {
                    if resp.status() == reqwest::StatusCode::NOT_FOUND {
                        bar.abandon();
                        return Err(refused(resp).await);
                    }
                    if let Some(o) = header_u64(&resp, "upload-offset") {
                        offset = o;
                        video = header_str(&resp, "reel-video-id");
                        state = header_str(&resp, "reel-video-state");
                        bar.set_position(offset);
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    remember(resume_file, &resume_key, None);
    Ok(serde_json::json!({
        "video_id": video,
        "state": state.unwrap_or_else(|| "uploaded".into()),
        "duplicate": false,
        "upload": servers.url(&path),
    }))
}

/// Tell the user `line`: above the progress bar on a terminal, on standard error otherwise (a
/// hidden bar prints nothing), so a script's log shows every interruption too.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// The part of an upload's URL that is the same on every server: `/files/{upload_id}`, from
/// the last `/files/` of its path (a `Location` built from a `public_url` may put a prefix
/// before it, which the servers' base URLs already hold); the whole path if it has none.
fn upload_path(url: &reqwest::Url) -> String {
    let path = url.path();
    match path.rfind("/files/") {
        Some(i) => path[i..].to_string(),
        None => path.to_string(),
    }
}

/// Send the request `build` makes for a server's base URL to the current server, then to each
/// other one in turn until one answers (any status); `servers` is left on the one that did.
/// Errors: the last server's, when none answered.
async fn send_in_turn(
    servers: &mut Servers,
    build: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut tried = 1;
    loop {
        match build(servers.current()).send().await {
            Ok(r) => return Ok(r),
            Err(e) if tried >= servers.len() => return Err(e),
            Err(_) => {
                tried += 1;
                servers.fail_over();
            }
        }
    }
}

/// `GET` of `path` through the first of `servers` that answers within `within`
/// ([`send_in_turn`]), as JSON. Errors: none answered; the answer is not a success.
async fn get_json_in_turn(
    client: &reqwest::Client,
    servers: &mut Servers,
    path: &str,
    within: Duration,
) -> Result<Value, ClientError> {
    let resp = send_in_turn(servers, |base| {
        client.get(format!("{base}{path}")).timeout(within)
    })
    .await
    .map_err(|e| connect_err(servers.current(), e))?;
    json_or_refused(resp).await
}

/// `HEAD` of the upload at `path` ([`send_in_turn`]); `None` when no server answered.
async fn head_any(
    client: &reqwest::Client,
    servers: &mut Servers,
    path: &str,
    stall: Duration,
) -> Option<reqwest::Response> {
    send_in_turn(servers, |base| {
        client
            .head(format!("{base}{path}"))
            .header("Tus-Resumable", "1.0.0")
            .timeout(stall)
    })
    .await
    .ok()
}

/// Send one `PATCH` to `url` of up to `chunk` bytes of `file` from `offset` (of `len`),
/// watched as [`UploadOptions::stall`] says: given up when no byte has left for `stall`, or,
/// once the whole body has, when the server's `/health` (`health`) is not answered within
/// `stall`. Errors: the file failed ([`Failure::Fatal`]); the connection failed
/// ([`Failure::Retry`]), or the server went silent (`silent`).
async fn patch_chunk(
    client: &reqwest::Client,
    url: &str,
    health: &str,
    file: &Path,
    (offset, len, chunk): (u64, u64, u64),
    stall: Duration,
    bar: &ProgressBar,
) -> Result<reqwest::Response, Failure> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let fatal = |e| Failure::Fatal(file_err(file)(e));
    let mut f = tokio::fs::File::open(file).await.map_err(fatal)?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(fatal)?;
    let n = chunk.min(len - offset);
    let sent = Arc::new(AtomicU64::new(0));
    let counted = {
        let (bar, sent) = (bar.clone(), sent.clone());
        tokio_util::io::ReaderStream::with_capacity(f.take(n), 256 * 1024).inspect(move |c| {
            if let Ok(c) = c {
                let total = sent.fetch_add(c.len() as u64, Ordering::Relaxed) + c.len() as u64;
                bar.set_position(offset + total);
            }
        })
    };
    let send = client
        .patch(url)
        .header("Tus-Resumable", "1.0.0")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/offset+octet-stream",
        )
        .header(reqwest::header::CONTENT_LENGTH, n)
        .header("Upload-Offset", offset)
        .body(reqwest::Body::wrap_stream(counted))
        .send();
    tokio::pin!(send);
    let silent = |why: String| Failure::Retry { why, silent: true };
    let mut watch = StallWatch::new(tokio::time::Instant::now(), stall);
    let mut tick = tokio::time::interval((stall / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> = None;
    loop {
        tokio::select! {
            r = &mut send => {
                return r.map_err(|e| Failure::Retry { why: e.to_string(), silent: false });
            }
            alive = async {
                match probe.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if probe.is_some() => {
                probe = None;
                if !alive {
                    return Err(silent(format!(
                        "the body has gone and {health} was not answered within {stall:?}"
                    )));
                }
                watch.answered(tokio::time::Instant::now());
            }
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                match watch.check(now, sent.load(Ordering::Relaxed), n) {
                    Watch::Wait => {}
                    Watch::Stalled => {
                        return Err(silent(format!("no byte sent for {stall:?}")));
                    }
                    Watch::Probe if probe.is_none() => {
                        let req = client.get(health).timeout(stall).send();
                        probe = Some(Box::pin(async move { req.await.is_ok() }));
                    }
                    Watch::Probe => {}
                }
            }
        }
    }
}

/// What a `PATCH` in flight calls for ([`StallWatch::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Go on waiting.
    Wait,
    /// Bytes remain and none has left for the stall bound: the server is gone.
    Stalled,
    /// The whole body has gone and the server has been silent for the stall bound: ask its
    /// `/health`.
    Probe,
}

/// The decision behind [`patch_chunk`]'s watch, without the I/O: when a `PATCH` stalls, and
/// when a server that has the whole body should show it is alive.
#[derive(Debug)]
struct StallWatch {
    stall: Duration,
    /// Body bytes sent at the last change, and when it was seen.
    sent: u64,
    since: tokio::time::Instant,
}

impl StallWatch {
    fn new(now: tokio::time::Instant, stall: Duration) -> Self {
        Self {
            stall,
            sent: 0,
            since: now,
        }
    }

    /// At `now`, with `sent` of `total` body bytes handed to the connection.
    fn check(&mut self, now: tokio::time::Instant, sent: u64, total: u64) -> Watch {
        if sent != self.sent {
            self.sent = sent;
            self.since = now;
            return Watch::Wait;
        }
        if now.duration_since(self.since) < self.stall {
            Watch::Wait
        } else if sent < total {
            Watch::Stalled
        } else {
            Watch::Probe
        }
    }

    /// The server answered a probe at `now`: it is alive; wait another stall bound.
    fn answered(&mut self, now: tokio::time::Instant) {
        self.since = now;
    }
}

/// The nodes a client command talks to, in order of preference: a request that cannot reach
/// the current one goes to the next ([`Servers::fail_over`]). Every node of a reel cluster
/// answers for every upload and video (forwarding to its home), so any of them will do.
#[derive(Debug, Clone)]
pub struct Servers {
    bases: Vec<String>,
    at: usize,
}

impl Servers {
    /// `urls`: base URLs such as `http://127.0.0.1:8080` (a trailing `/` is dropped).
    /// Errors: [`ClientError::NoServer`] when none is given.
    pub fn new<S: AsRef<str>>(urls: &[S]) -> Result<Self, ClientError> {
        let bases: Vec<String> = urls
            .iter()
            .map(|u| u.as_ref().trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::NoServer);
        }
        Ok(Self { bases, at: 0 })
    }

    /// How many there are (at least one).
    pub fn len(&self) -> usize {
        self.bases.len()
    }

    /// Never: [`Servers::new`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.bases.is_empty()
    }

    /// The first given: what names an upload in the resume file.
    pub fn first(&self) -> &str {
        &self.bases[0]
    }

    /// The server requests go to now.
    pub fn current(&self) -> &str {
        &self.bases[self.at]
    }

    /// Go on to the next server, after the last back to the first. `false` (and no change)
    /// when there is only one.
    pub fn fail_over(&mut self) -> bool {
        if self.bases.len() < 2 {
            return false;
        }
        self.at = (self.at + 1) % self.bases.len();
        true
    }

    /// Make `base` current if it is one of them (an upload's own server, from the resume file).
    fn prefer(&mut self, base: &str) {
        if let Some(i) = self.bases.iter().position(|b| b == base) {
            self.at = i;
        }
    }

    /// `path` (starting with `/`) on the current server.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.current())
    }
}

/// `POST /videos/{id}/reprocess`: process a failed video again, through the first of
/// `servers` that answers within `answer_within` (as [`status`] goes through them). Returns
/// the server's answer (`video_id`, `state`).
///
/// A server that took the request and then stopped answering may have reopened the video all
/// the same; the next server then refuses with `409`, as the video is no longer failed. So the
/// client reads the video's record first, and after such a failover takes a `409` as done when
/// the record it read was `failed` and the one it reads now is not (only a reprocess moves a
/// video out of `failed`): the record read now is the answer.
///
/// Errors: no server given; none can be reached; the server refuses (404 unknown id, 409 not
/// failed).
pub async fn reprocess<S: AsRef<str>>(
    servers: &[S],
    id: &str,
    answer_within: Duration,
) -> Result<Value, ClientError> {
    let mut servers = Servers::new(servers)?;
    let client = reqwest::Client::new();
    let record = format!("/videos/{id}");
    let before = get_json_in_turn(&client, &mut servers, &record, answer_within).await?;
    let asked_of = servers.current().to_string();
    let resp = send_in_turn(&mut servers, |base| {
        client
            .post(format!("{base}{record}/reprocess"))
            .timeout(answer_within)
    })
    .await
    .map_err(|e| connect_err(servers.current(), e))?;
    let failed_over = servers.current() != asked_of;
    match json_or_refused(resp).await {
        Err(refused @ ClientError::Refused { status: 409, .. })
            if failed_over && before["state"] == "failed" =>
        {
            let now = get_json_in_turn(&client, &mut servers, &record, answer_within).await?;
            if now["state"] != "failed" {
                Ok(now)
            } else {
                Err(refused)
            }
        }
        answer => answer,
    }
}

/// `GET /videos/{id}`; with `wait`, poll until the state is `ready` or `failed` (or `wait`
/// runs out), drawing progress. A server that cannot be reached (or does not answer within
/// 30 s) is left for the next of `servers`; the poll gives up only when every one of them
/// failed in a row.
///
/// Errors: no server given; none can be reached; the server refuses (404 unknown id).
pub async fn status<S: AsRef<str>>(
    servers: &[S],
    id: &str,
    wait: Option<Duration>,
) -> Result<Value, ClientError> {
    let mut servers = Servers::new(servers)?;
    let path = format!("/videos/{id}");
    let client = reqwest::Client::new();
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let bar = deadline.map(|_| {
        let b = ProgressBar::new(1000);
        b.set_style(
            ProgressStyle::with_template("{msg:12} [{bar:40}] {percent}%")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    loop {
        let v = get_json_in_turn(&client, &mut servers, &path, DEFAULT_STALL).await?;
        let state = v["state"].as_str().unwrap_or("").to_string();
        if let Some(b) = &bar {
            b.set_message(state.clone());
            b.set_position((v["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        }
        let done = state == "ready" || state == "failed";
        match deadline {
            Some(d) if !done && tokio::time::Instant::now() < d => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return Ok(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_fail_over_in_turn_and_refuse_an_empty_list() {
        assert!(matches!(
            Servers::new::<&str>(&[]),
            Err(ClientError::NoServer)
        ));
        assert!(matches!(
            Servers::new(&[" ", ""]),
            Err(ClientError::NoServer)
        ));
        let mut one = Servers::new(&["http://a:1/"]).unwrap();
        assert_eq!(one.url("/files/x"), "http://a:1/files/x");
        assert!(!one.fail_over(), "one server has nothing to fail over to");
        let mut s = Servers::new(&["http://a:1", "http://b:2/", "http://c:3"]).unwrap();
        let mut seen = vec![s.current().to_string()];
        for _ in 0..3 {
            assert!(s.fail_over());
            seen.push(s.current().to_string());
        }
        assert_eq!(
            seen,
            ["http://a:1", "http://b:2", "http://c:3", "http://a:1"]
        );
        s.prefer("http://c:3");
        assert_eq!(s.current(), "http://c:3");
        s.prefer("http://elsewhere:9");
        assert_eq!(
            s.current(),
            "http://c:3",
            "an unknown server changes nothing"
        );
        assert_eq!(s.first(), "http://a:1");
    }

    #[test]
    fn an_upload_path_is_taken_from_the_last_files_segment() {
        let path = |u: &str| upload_path(&reqwest::Url::parse(u).unwrap());
        assert_eq!(
            path("http://127.0.0.1:8080/files/node-1.ab"),
            "/files/node-1.ab"
        );
        assert_eq!(
            path("https://videos.example.com/reel/files/node-1.ab"),
            "/files/node-1.ab",
            "a public_url's prefix is the base URL's business"
        );
        assert_eq!(path("http://h/elsewhere/x"), "/elsewhere/x");
    }

    #[test]
    fn a_patch_stalls_only_while_bytes_remain_and_a_silent_server_is_probed() {
        let stall = Duration::from_secs(30);
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = StallWatch::new(t0, stall);
        // Bytes moving: never stalled, however long the body takes.
        for (i, s) in (0..200).step_by(20).enumerate() {
            assert_eq!(
                w.check(at(s), (i as u64 + 1) * 1000, 1_000_000),
                Watch::Wait
            );
        }
        // No byte for less than the bound: wait; for the bound: stalled.
        assert_eq!(w.check(at(209), 10_000, 1_000_000), Watch::Wait);
        assert_eq!(w.check(at(210), 10_000, 1_000_000), Watch::Stalled);
        // The whole body gone and the server silent: never stalled, probed every bound.
        let mut w = StallWatch::new(t0, stall);
        assert_eq!(w.check(at(1), 500, 500), Watch::Wait);
        assert_eq!(w.check(at(30), 500, 500), Watch::Wait);
        assert_eq!(w.check(at(31), 500, 500), Watch::Probe);
        w.answered(at(32));
        assert_eq!(w.check(at(61), 500, 500), Watch::Wait);
        assert_eq!(w.check(at(62), 500, 500), Watch::Probe);
    }
}
