//! Streaming: the multivariant playlist, media playlists, init segments and segments of ready
//! videos (seed: "streaming is possible only after processing completes").
//!
//! Content types follow RFC 8216 section 4 (`application/vnd.apple.mpegurl`) and CMAF
//! (`video/mp4` for init and media segments). Segments and init segments are immutable once a
//! video is ready: long `Cache-Control` and the store's `ETag`. Playlists get a short lifetime.

use std::convert::Infallible;

use bytes::Bytes;
use serde_json::json;
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::{Filter, Rejection};

use crate::http::videos::{checked_id, record};
use crate::http::{json_response, respond, ApiError, App};
use crate::model::VideoState;
use crate::storage::keys::{self, RenditionFile};

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const PLAYLIST_CACHE: &str = "public, max-age=10";
const SEGMENT_CACHE: &str = "public, max-age=31536000, immutable";

pub(super) fn routes(
    with_app: impl Filter<Extract = (App,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    let master = warp::path!("videos" / String / "master.m3u8")
        .and(warp::get())
        .and(with_app.clone())
        .and_then(|id: String, app: App| async move { respond(multivariant(app, id).await) });
    let file = warp::path!("videos" / String / String / String)
        .and(warp::get())
        .and(with_app)
        .and_then(
            |id: String, rendition: String, file: String, app: App| async move {
                respond(rendition_file(app, id, rendition, file).await)
            },
        );
    master.or(file).unify()
}

/// Ensure the video is ready; `409` with its state otherwise, `404` when unknown.
async fn ensure_ready(app: &App, id: &str) -> Result<(), ApiError> {
    checked_id(id)?;
    if app.is_known_ready(id) {
        return Ok(());
    }
    let r = record(app, id).await?;
    match r.state {
        VideoState::Ready => {
            app.remember_ready(id);
            Ok(())
        }
        VideoState::Failed => Err(ApiError::NotReady(format!(
            "video {id} failed and will not stream: {}",
            r.error.unwrap_or_default()
        ))),
        other => Err(ApiError::NotReady(format!(
            "video {id} is {}: it streams once it is ready",
            other.as_str()
        ))),
    }
}

fn object_response(
    bytes: Bytes,
    content_type: &'static str,
    cache: &'static str,
    etag: Option<String>,
) -> Response<Bytes> {
    let mut r = Response::new(bytes);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Some(v) = etag
        .map(|t| {
            if t.starts_with('"') {
                t
            } else {
                format!("\"{t}\"")
            }
        })
        .and_then(|t| HeaderValue::from_str(&t).ok())
    {
        h.insert(header::ETAG, v);
    }
    r
}

async fn multivariant(app: App, id: String) -> Result<Response<Bytes>, ApiError> {
    ensure_ready(&app, &id).await?;
    let obj = app
        .node
        .ctx
        .storage
        .get(&keys::multivariant(&id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("video {id} has no multivariant playlist")))?;
    Ok(object_response(
        obj.bytes,
        PLAYLIST_TYPE,
        PLAYLIST_CACHE,
        obj.e_tag,
    ))
}

async fn rendition_file(
    app: App,
    id: String,
    rendition: String,
    file: String,
) -> Result<Response<Bytes>, ApiError> {
    let kind = keys::parse_rendition_file(&file);
    if !keys::valid_rendition_name(&rendition) || kind.is_none() {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no file {rendition}/{file}") }),
        ));
    }
    ensure_ready(&app, &id).await?;
    let obj = app
        .node
        .ctx
        .storage
        .get(&keys::rendition_file(&id, &rendition, &file))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("video {id} has no {rendition}/{file}")))?;
    let (ctype, cache) = match kind {
        Some(RenditionFile::MediaPlaylist) => (PLAYLIST_TYPE, PLAYLIST_CACHE),
        _ => ("video/mp4", SEGMENT_CACHE),
    };
    Ok(object_response(obj.bytes, ctype, cache, obj.e_tag))
}
