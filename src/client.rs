//! The client commands: `reel upload FILE` (tus 1.0.0, resumable) and `reel status VIDEO_ID`.

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
    /// Where unfinished uploads are remembered (`{server} {sha256}` → upload URL, JSON), so
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

/// Upload `file` to `server` with tus 1.0.0 (`/files/`) and default options: see
/// [`upload_with`].
pub async fn upload(server: &str, file: &Path) -> Result<Value, ClientError> {
    upload_with(server, file, &UploadOptions::default()).await
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
    /// Worth a retry after asking the offset (network, 5xx, 409, 423).
    Retry(String),
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

/// Upload `file` to `server` with tus 1.0.0:
///
/// 1. compute the file's SHA-256 and create the upload with `Upload-Metadata` `filename` and
///    `sha256`: when the server already holds those bytes it answers with the full offset and
///    the existing video, and nothing is sent (dedupe before transfer);
/// 2. `PATCH` the rest of the file (in chunks of `chunk_bytes`, by default one), drawing a
///    progress bar;
/// 3. on a dropped connection or a 5xx, ask `HEAD` for the offset and resume there, with
///    exponential backoff, at most `retries` times in a row;
/// 4. if the client itself was stopped, the next `reel upload` of the same file to the same
///    server finds the upload in `resume_file` and resumes it.
///
/// Returns the JSON the rest of the CLI prints: `video_id`, `state`, `duplicate`.
///
/// Errors: the file cannot be read; the server cannot be reached after the retries; the
/// server refused the file (e.g. `415`: not a video, `413`: too large).
pub async fn upload_with(
    server: &str,
    file: &Path,
    opts: &UploadOptions,
) -> Result<Value, ClientError> {
    let server = server.trim_end_matches('/');
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
    let resume_key = format!("{server} {sha256}");
    let resume_file = opts.resume_file.as_deref();
    // An unfinished upload of these bytes to this server, from an earlier run of the client?
    let earlier = match resume_file.map(read_resume) {
        Some(map) => match map.get(&resume_key).and_then(Value::as_str) {
            Some(u) => match reqwest::Url::parse(u) {
                Ok(url) => client
                    .head(url.clone())
                    .header("Tus-Resumable", "1.0.0")
                    .send()
                    .await
                    .ok()
                    .filter(|r| {
                        r.status().is_success() && header_u64(r, "upload-length") == Some(len)
                    })
                    .map(|r| (url, r)),
                Err(_) => None,
            },
            None => None,
        },
        None => None,
    };
    let (url, resp) = match earlier {
        Some(found) => found,
        None => {
            let resp = client
                .post(format!("{server}/files/"))
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", len)
                .header("Upload-Metadata", metadata)
                .send()
                .await
                .map_err(|e| connect_err(server, e))?;
            if resp.status() != reqwest::StatusCode::CREATED {
                return Err(refused(resp).await);
            }
            let location = header_str(&resp, "location").ok_or_else(|| ClientError::Refused {
                status: 201,
                message: "the server sent no Location".into(),
            })?;
            let url = reqwest::Url::parse(server)
                .and_then(|base| base.join(&location))
                .map_err(|e| ClientError::Refused {
                    status: 201,
                    message: format!("bad Location {location}: {e}"),
                })?;
            (url, resp)
        }
    };
    let mut offset = header_u64(&resp, "upload-offset").unwrap_or(0);
    let mut video = header_str(&resp, "reel-video-id");
    let mut state = header_str(&resp, "reel-video-state");
    let duplicate = resp.status() == reqwest::StatusCode::CREATED;
    if offset == len && video.is_some() {
        remember(resume_file, &resume_key, None);
        return Ok(serde_json::json!({
            "video_id": video, "state": state, "duplicate": duplicate, "upload": url.as_str(),
        }));
    }
    remember(resume_file, &resume_key, Some(url.as_str()));
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
        let attempt: Result<(), Failure> = async {
            let resp = patch_chunk(&client, &url, file, offset, len, opts.chunk_bytes, &bar)
                .await
                .map_err(|e| match e {
                    Ok(io) => Failure::Fatal(io),
                    Err(net) => Failure::Retry(net),
                })?;
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
                return Err(Failure::Retry(format!("the server answered {status}")));
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
            Err(Failure::Retry(why)) => {
                failures += 1;
                if failures > opts.retries {
                    bar.abandon();
                    return Err(ClientError::Connect {
                        server: server.to_string(),
                        message: format!("gave up after {} retries: {why}", opts.retries),
                    });
                }
                let delay = opts
                    .backoff
                    .saturating_mul(1 << (failures - 1).min(5))
                    .min(Duration::from_secs(8));
                bar.println(format!(
                    "upload interrupted at {offset} bytes ({why}); resuming in {delay:?}"
                ));
                tokio::time::sleep(delay).await;
                // Ask where the upload stands (what the server kept), and go on from there.
                if let Ok(resp) = client
                    .head(url.clone())
                    .header("Tus-Resumable", "1.0.0")
                    .send()
                    .await
                {
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
        "upload": url.as_str(),
    }))
}

/// Send one `PATCH` of up to `chunk` bytes from `offset`. `Err(Ok(_))`: the file failed;
/// `Err(Err(_))`: the network failed.
async fn patch_chunk(
    client: &reqwest::Client,
    url: &reqwest::Url,
    file: &Path,
    offset: u64,
    len: u64,
    chunk: u64,
    bar: &ProgressBar,
) -> Result<reqwest::Response, Result<ClientError, String>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| Ok(file_err(file)(e)))?;
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| Ok(file_err(file)(e)))?;
    let n = chunk.min(len - offset);
    let base = offset;
    let counted = {
        let bar = bar.clone();
        let mut sent = 0u64;
        tokio_util::io::ReaderStream::with_capacity(f.take(n), 256 * 1024).inspect(move |c| {
            if let Ok(c) = c {
                sent += c.len() as u64;
                bar.set_position(base + sent);
            }
        })
    };
    client
        .patch(url.clone())
        .header("Tus-Resumable", "1.0.0")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/offset+octet-stream",
        )
        .header(reqwest::header::CONTENT_LENGTH, n)
        .header("Upload-Offset", offset)
        .body(reqwest::Body::wrap_stream(counted))
        .send()
        .await
        .map_err(|e| Err(e.to_string()))
}

/// `POST /videos/{id}/reprocess`: process a failed video again. Returns the server's answer
/// (`video_id`, `state`).
///
/// Errors: the server cannot be reached, or refuses (404 unknown id, 409 not failed).
pub async fn reprocess(server: &str, id: &str) -> Result<Value, ClientError> {
    let url = format!("{}/videos/{id}/reprocess", server.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .map_err(|e| connect_err(server, e))?;
    json_or_refused(resp).await
}

/// `GET /videos/{id}`; with `wait`, poll until the state is `ready` or `failed` (or `wait`
/// runs out), drawing progress.
pub async fn status(server: &str, id: &str, wait: Option<Duration>) -> Result<Value, ClientError> {
    let url = format!("{}/videos/{id}", server.trim_end_matches('/'));
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
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| connect_err(server, e))?;
        let v = json_or_refused(resp).await?;
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
