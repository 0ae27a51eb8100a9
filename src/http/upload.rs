//! `POST /upload` and `PUT /upload`: receive a source, store it under its content address, and
//! start processing once.
//!
//! The body streams to the object store in parts (memory stays bounded whatever the size) while
//! its SHA-256 is computed. Only then is the `video_id` known (design brief section 2), so the
//! bytes land first under `uploads/direct/{token}` and are moved to `sources/{video_id}`. The
//! record is created with create-if-absent: of two identical uploads racing, exactly one creates
//! it and starts the job; the other answers `200` with `duplicate: true`. An interrupted body, an
//! empty one, or one over the size limit stores nothing.
//!
//! Dedupe before transfer: a client may declare the SHA-256 of the body in the header
//! [`CONTENT_SHA256`] (`Reel-Content-Sha256: <64 hex digits>`). When reel already holds those
//! bytes the answer is at once `200` with the existing `video_id` and `duplicate: true`, and the
//! body is never read (a client sending `Expect: 100-continue`, as curl does for large files,
//! sends nothing). Otherwise the body is received and must match the declared digest (`400`
//! and nothing stored when it does not).
//!
//! Plainly not a video: the first bytes (up to 4 KiB, [`crate::media::sniff::Head`]) are
//! sniffed as they arrive, as `PATCH /files/{id}` does for tus. A text file, an image, an
//! archive or an audio file (see [`crate::media::sniff`]) is refused with `415` and nothing is
//! stored; bytes with no known magic are left to ffprobe, and a video they do not make fails
//! with its reason. A body refused before its end is read on and thrown away while the answer
//! goes, so that a client still sending reads it ([`super::linger`]).

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::{Filter, Rejection};

use crate::http::{json_response, respond, ApiError, App};
use crate::ingest;
use crate::media::sniff::{Head, Sniff};
use crate::storage::part_writer::{next_within, PartWriter};
use crate::storage::{keys, StorageError};

/// The request header that declares the body's SHA-256 (lowercase or uppercase hex).
pub const CONTENT_SHA256: &str = "reel-content-sha256";

/// Parse a declared SHA-256: 64 hex digits, returned lowercase.
pub(crate) fn parse_sha256(text: &str) -> Option<String> {
    let t = text.trim();
    (t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

pub(super) fn routes(
    with_app: impl Filter<Extract = (App,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    warp::path!("upload")
        .and(warp::post().or(warp::put()).unify())
        .and(with_app)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>(CONTENT_SHA256))
        .and(warp::body::stream())
        .and_then(handle)
}

async fn handle(
    app: App,
    ctype: Option<String>,
    length: Option<u64>,
    declared: Option<String>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + 'static,
) -> Result<Response<Bytes>, Infallible> {
    let declared = match declared.as_deref().map(parse_sha256) {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => {
            return respond(Err(ApiError::BadRequest(format!(
                "{CONTENT_SHA256} must be 64 hex digits (the SHA-256 of the body)"
            ))))
        }
    };
    if let Some(d) = &declared {
        match app.node.ctx.ingest().existing(d).await {
            Ok(Some(a)) => {
                app.node.after_ingest(&a).await;
                return respond(Ok(answer(&a)));
            }
            Ok(None) => {}
            Err(e) => return respond(Err(e.into())),
        }
    }
    // Read through `linger`: a body refused before its end is read on and thrown away while
    // the answer goes, so that the client, still sending, reads it.
    respond(upload(app, ctype, length, declared, super::linger::body(body)).await)
}

/// A body received and stored under a staging key.
struct Received {
    staging: String,
    sha256: String,
    bytes: u64,
    filename: Option<String>,
}

async fn upload<S, E>(
    app: App,
    ctype: Option<String>,
    length: Option<u64>,
    declared: Option<String>,
    body: S,
) -> Result<Response<Bytes>, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let max = app.config.limits.max_upload_bytes;
    if let Some(n) = length.filter(|n| *n > max) {
        return Err(ApiError::TooLarge(format!(
            "the upload is {n} bytes; the limit is {max} bytes"
        )));
    }
    let received = match ctype.as_deref().map(|c| c.parse::<mime::Mime>()) {
        Some(Ok(m)) if m.type_() == mime::MULTIPART && m.subtype() == mime::FORM_DATA => {
            let boundary = m
                .get_param(mime::BOUNDARY)
                .ok_or_else(|| ApiError::BadRequest("multipart body without a boundary".into()))?
                .to_string();
            let mut form = multer::Multipart::new(body, boundary);
            loop {
                let field = form
                    .next_field()
                    .await
                    .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?
                    .ok_or_else(|| {
                        ApiError::BadRequest("the multipart body has no field named `file`".into())
                    })?;
                if field.name() == Some("file") {
                    let filename = field.file_name().map(str::to_string);
                    break receive(&app, field, filename).await?;
                }
            }
        }
        _ => receive(&app, body, None).await?,
    };
    if let Some(d) = declared.filter(|d| *d != received.sha256) {
        let _ = app.node.ctx.storage.delete(&received.staging).await;
        return Err(ApiError::BadRequest(format!(
            "the body's SHA-256 is {}, not the declared {d}; nothing was stored",
            received.sha256
        )));
    }
    accept(&app, received).await
}

/// A request body's next step, as [`next_chunk`] found it.
pub(crate) enum BodyNext<E> {
    /// Its next bytes.
    Chunk(Bytes),
    /// It ended.
    End,
    /// It broke off (the client's connection failed or was cut): the error.
    Broken(E),
    /// No byte came within the wait (`limits.body_idle_seconds`).
    Quiet,
}

/// The next step of `body`, waited for at most `idle` while `writer`'s part leaves memory on
/// time ([`next_within`]).
///
/// Errors: the store's or the spool's, for this or an earlier part.
pub(crate) async fn next_chunk<E>(
    writer: Option<&mut PartWriter>,
    body: &mut (impl Stream<Item = Result<Bytes, E>> + Unpin),
    idle: Duration,
) -> Result<BodyNext<E>, StorageError> {
    Ok(match next_within(writer, body.next(), idle).await? {
        None => BodyNext::Quiet,
        Some(None) => BodyNext::End,
        Some(Some(Err(e))) => BodyNext::Broken(e),
        Some(Some(Ok(c))) => BodyNext::Chunk(c),
    })
}

/// Stream `body` into a staging object, hashing and counting. Errors: `415` when the first
/// bytes are plainly not a video, `413` over the size limit, `408` when the body stalls, `400`
/// when it is cut or empty; in each case the staging object is removed.
async fn receive<S, E>(
    app: &App,
    mut body: S,
    filename: Option<String>,
) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let storage = &app.node.ctx.storage;
    let max = app.config.limits.max_upload_bytes;
    let staging = keys::direct_upload(&format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    ));
    let mut writer = storage.writer(&staging).await?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut head = Head::default();
    let mut judged = false;
    let not_video =
        |reason: String| ApiError::UnsupportedMedia(format!("{reason}; nothing was stored"));
    let idle = app.config.limits.body_idle();
    let outcome: Result<(), ApiError> = async {
        loop {
            let chunk = match next_chunk(Some(&mut writer), &mut body, idle).await? {
                BodyNext::Chunk(c) => c,
                BodyNext::End => break,
                BodyNext::Broken(e) => {
                    return Err(ApiError::BadRequest(format!(
                        "the upload was interrupted after {total} bytes ({e}); nothing was stored"
                    )))
                }
                BodyNext::Quiet => {
                    return Err(ApiError::RequestTimeout(format!(
                        "no bytes arrived for {} s after {total} bytes; nothing was stored: send the file again",
                        idle.as_secs()
                    )))
                }
            };
            total += chunk.len() as u64;
            if total > max {
                return Err(ApiError::TooLarge(format!(
                    "the upload exceeds the limit of {max} bytes; nothing was stored"
                )));
            }
            hasher.update(&chunk);
            if !judged {
                match head.feed(&chunk, false) {
                    Sniff::NotVideo(reason) => return Err(not_video(reason)),
                    Sniff::NeedMore => {}
                    Sniff::Container(_) | Sniff::Unknown => judged = true,
                }
            }
            writer.put(chunk).await?;
        }
        // A body shorter than the sniff window is judged whole (an empty one is refused below).
        if !judged && total > 0 {
            if let Sniff::NotVideo(reason) = head.judge(true) {
                return Err(not_video(reason));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.finish().await?;
    if total == 0 {
        let _ = storage.delete(&staging).await;
        return Err(ApiError::BadRequest(
            "the upload is empty: send the video file as the request body".into(),
        ));
    }
    Ok(Received {
        staging,
        sha256: hex::encode(hasher.finalize()),
        bytes: total,
        filename,
    })
}

/// Answer with what [`ingest::accept`] or [`ingest::existing`] decided: `202` for a new
/// video, `200` with `duplicate: true` for bytes reel already holds.
fn answer(a: &ingest::Accepted) -> Response<Bytes> {
    let status = if a.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = json!({ "video_id": a.video_id, "state": a.state, "duplicate": a.duplicate });
    with_location(
        json_response(status, &body),
        &format!("/videos/{}", a.video_id),
    )
}

async fn accept(app: &App, r: Received) -> Result<Response<Bytes>, ApiError> {
    let staged = ingest::Staged {
        key: r.staging,
        sha256: r.sha256,
        bytes: r.bytes,
        filename: r.filename,
    };
    let accepted = app.node.ctx.ingest().accept(staged).await?;
    app.node.after_ingest(&accepted).await;
    Ok(answer(&accepted))
}

fn with_location(mut r: Response<Bytes>, location: &str) -> Response<Bytes> {
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
