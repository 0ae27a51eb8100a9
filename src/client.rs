//! The client commands: `reel upload FILE` and `reel status VIDEO_ID`.

use std::path::Path;
use std::time::Duration;

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

/// Upload `file` to `server` (`PUT /upload`), showing a progress bar; returns the server's JSON
/// answer (`video_id`, `state`, `duplicate`).
pub async fn upload(server: &str, file: &Path) -> Result<Value, ClientError> {
    let file_err = |source| ClientError::File {
        path: file.display().to_string(),
        source,
    };
    let f = tokio::fs::File::open(file).await.map_err(file_err)?;
    let len = f.metadata().await.map_err(file_err)?.len();
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let counted = {
        let bar = bar.clone();
        tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
            if let Ok(c) = chunk {
                bar.inc(c.len() as u64);
            }
        })
    };
    let resp = reqwest::Client::new()
        .put(format!("{}/upload", server.trim_end_matches('/')))
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(counted))
        .send()
        .await
        .map_err(|e| connect_err(server, e))?;
    bar.finish_and_clear();
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
