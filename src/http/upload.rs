//! `POST /upload` and `PUT /upload`: receive a source, store it under its content address, and
//! start processing once.
//!
//! The body streams to the object store in parts (memory stays bounded whatever the size) while
//! its SHA-256 is computed. Only then is the `video_id` known (design brief section 2), so the
//! bytes land first under `uploads/direct/{token}` and are moved to `sources/{video_id}`. The
//! record is created with create-if-absent: of two identical uploads racing, exactly one creates
//! it and starts the job; the other answers `200` with `duplicate: true`. An interrupted body, an
//! empty one, or one over the size limit stores nothing.

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::{Filter, Rejection};

use crate::http::{json_response, respond, ApiError, App};
use crate::model::{video_id, VideoRecord};
use crate::storage::events::NewEvent;
use crate::storage::keys;

pub(super) fn routes(
    with_app: impl Filter<Extract = (App,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    warp::path!("upload")
        .and(warp::post().or(warp::put()).unify())
        .and(with_app)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(handle)
}

async fn handle(
    app: App,
    ctype: Option<String>,
    length: Option<u64>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + 'static,
) -> Result<Response<Bytes>, Infallible> {
    // A `Bytes`-backed buffer turns into `Bytes` without a copy.
    let body = Box::pin(body.map_ok(|mut b| {
        let n = b.remaining();
        b.copy_to_bytes(n)
    }));
    respond(upload(app, ctype, length, body).await)
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
    accept(&app, received).await
}

/// Stream `body` into a staging object, hashing and counting.
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
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!(
                    "the upload was interrupted after {total} bytes ({e}); nothing was stored"
                ))
            })?;
            total += chunk.len() as u64;
            if total > max {
                return Err(ApiError::TooLarge(format!(
                    "the upload exceeds the limit of {max} bytes; nothing was stored"
                )));
            }
            hasher.update(&chunk);
            writer
                .wait_for_capacity(4)
                .await
                .map_err(|e| ApiError::Storage(e.into()))?;
            writer.put(chunk);
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer
        .finish()
        .await
        .map_err(|e| ApiError::Storage(e.into()))?;
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

/// Move the staged bytes to their content address and create the record once.
async fn accept(app: &App, r: Received) -> Result<Response<Bytes>, ApiError> {
    let ctx = &app.node.ctx;
    let storage = &ctx.storage;
    let id = video_id(&r.sha256, &ctx.processing.profile);
    let location = format!("/videos/{id}");
    if let Some(existing) = storage.load_record(&id).await? {
        let _ = storage.delete(&r.staging).await;
        return Ok(duplicate(app, &id, existing.state.as_str(), &location).await);
    }
    if storage.exists(&keys::source(&id)).await? {
        let _ = storage.delete(&r.staging).await;
    } else {
        storage.rename(&r.staging, &keys::source(&id)).await?;
    }
    // Index first: a crash between the two leaves a marker without a record (skipped), never an
    // unfinished video the reconcile loop cannot find.
    storage.mark_active(&id).await?;
    let record = VideoRecord::uploaded(
        id.clone(),
        r.sha256.clone(),
        r.bytes,
        ctx.processing.profile.clone(),
        r.filename,
    );
    if !storage.create_record(&record).await? {
        let state = storage
            .load_record(&id)
            .await?
            .map(|r| r.state.as_str())
            .unwrap_or("uploaded");
        return Ok(duplicate(app, &id, state, &location).await);
    }
    ctx.events
        .append(
            NewEvent::video(&id, "upload_received")
                .outcome("uploaded")
                .detail(format!("{} bytes, sha256 {}", r.bytes, r.sha256)),
        )
        .await;
    app.node.ensure_video(&id).await;
    let body = json!({ "video_id": id, "state": "uploaded", "duplicate": false });
    Ok(with_location(
        json_response(StatusCode::ACCEPTED, &body),
        &location,
    ))
}

async fn duplicate(app: &App, id: &str, state: &str, location: &str) -> Response<Bytes> {
    app.node
        .ctx
        .events
        .append(
            NewEvent::video(id, "duplicate_upload")
                .outcome(state)
                .detail("no new processing"),
        )
        .await;
    if state == "uploaded" || state == "processing" {
        // Idempotent: makes sure an interrupted video is being processed, never starts a second job.
        app.node.ensure_video(id).await;
    }
    let body = json!({ "video_id": id, "state": state, "duplicate": true });
    with_location(json_response(StatusCode::OK, &body), location)
}

fn with_location(mut r: Response<Bytes>, location: &str) -> Response<Bytes> {
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
