//! `GET /videos`, `GET /videos/{id}`, `GET /videos/{id}/events`: observable lifecycle (seed
//! rule 4). The record in the object store is the truth; a running `VideoActor` adds live
//! progress. `POST /videos/{id}/reprocess` processes a `failed` video again from its stored
//! source.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use warp::http::{Response, StatusCode};
use warp::{Filter, Rejection};

use crate::actors::video_supervisor::live_status;
use crate::cluster::protocol::{Reply, Request};
use crate::cluster::ring::video_key;
use crate::http::{json_response, respond, ApiError, App};
use crate::model::{VideoRecord, VideoState};
use crate::storage::events::NewEvent;
use crate::storage::{keys, RecordWrite};
use futures::StreamExt;

pub(super) fn routes(
    with_app: impl Filter<Extract = (App,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    let list = warp::path!("videos")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(
            |app: App, q: std::collections::HashMap<String, String>| async move {
                respond(list(app, q).await)
            },
        );
    let one = warp::path!("videos" / String)
        .and(warp::get())
        .and(with_app.clone())
        .and_then(|id: String, app: App| async move { respond(status(app, id).await) });
    let reprocess = warp::path!("videos" / String / "reprocess")
        .and(warp::post())
        .and(with_app.clone())
        .and_then(|id: String, app: App| async move { respond(reprocess(app, id).await) });
    let events = warp::path!("videos" / String / "events")
        .and(warp::get())
        .and(with_app)
        .and(warp::query::<EventsQuery>())
        .and_then(|id: String, app: App, q: EventsQuery| async move {
            respond(events(app, id, q.scope.as_deref() == Some("local")).await)
        });
    list.or(one)
        .unify()
        .or(events)
        .unify()
        .or(reprocess)
        .unify()
}

/// `POST /videos/{id}/reprocess`: a `failed` video goes back to `uploaded` and is processed
/// again from its stored source (outputs already stored are kept). `202` with the new state;
/// `409` for a video that has not failed; `404` for an unknown id.
async fn reprocess(app: App, id: String) -> Result<Response<Bytes>, ApiError> {
    let id = checked_id(&id)?;
    let ctx = &app.node.ctx;
    // Index first, as ingest does: a crash after the swap must not leave an `uploaded` video
    // the reconcile loop cannot find. A marker left on a video that is not failed is removed
    // by the next reconcile.
    ctx.storage.mark_active(id).await?;
    match ctx.storage.reopen_failed_record(id).await? {
        RecordWrite::Written => {}
        RecordWrite::Missing => {
            let _ = ctx.storage.clear_active(id).await;
            return Err(ApiError::NotFound(format!("no video {id}")));
        }
        RecordWrite::WrongState { stored } | RecordWrite::Terminal { stored } => {
            return Err(ApiError::Conflict(format!(
                "video {id} is {}: only a failed video can be reprocessed",
                stored.as_str()
            )))
        }
        RecordWrite::Fenced { .. } => {
            return Err(ApiError::Conflict(format!(
                "video {id} changed while it was being reopened: ask again"
            )))
        }
    }
    ctx.events
        .append(NewEvent::video(id, "reprocess_requested").detail("failed -> uploaded"))
        .await;
    app.node.ensure_video(id).await;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"video_id": id, "state": "uploaded"}),
    ))
}

/// `?scope=local`: only this node's events (what nodes ask each other for).
#[derive(serde::Deserialize)]
struct EventsQuery {
    scope: Option<String>,
}

/// Check the id's shape before it reaches a key.
pub(super) fn checked_id(id: &str) -> Result<&str, ApiError> {
    if keys::valid_video_id(id) {
        Ok(id)
    } else {
        Err(ApiError::NotFound(format!(
            "no video {id:?}: video ids are 32 lowercase hex digits"
        )))
    }
}

/// The record of a known video, or `NotFound`.
pub(super) async fn record(app: &App, id: &str) -> Result<VideoRecord, ApiError> {
    app.node
        .ctx
        .storage
        .load_record(checked_id(id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no video {id}")))
}

fn view(record: &VideoRecord, progress: f64) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
    v["progress"] = json!((progress * 1000.0).round() / 1000.0);
    if record.state == VideoState::Ready {
        v["playlist"] = json!(format!("/videos/{}/master.m3u8", record.video_id));
    }
    v
}

async fn status(app: App, id: String) -> Result<Response<Bytes>, ApiError> {
    let mut record = record(&app, &id).await?;
    let mut progress = match record.state {
        VideoState::Ready => 1.0,
        _ => 0.0,
    };
    let cluster = &app.node.ctx.cluster;
    let home = cluster.home(&video_key(&id));
    if !record.state.is_terminal() && home != cluster.self_id() {
        let req = Request::VideoProgress {
            video_id: id.clone(),
        };
        if let Ok(Reply::Progress { progress: Some(p) }) =
            cluster.request(&home, &req, Duration::from_secs(2)).await
        {
            progress = p;
        }
    } else if !record.state.is_terminal() {
        if let Some(s) = live_status(&app.node.refs.videos, &id).await {
            progress = s.progress;
            record = s.record;
        }
    }
    let mut v = view(&record, progress);
    v["home_node"] = json!(home);
    Ok(json_response(StatusCode::OK, &v))
}

/// Videos per page of `GET /videos` unless `limit` says otherwise, and the most it may say.
pub const PAGE_DEFAULT: usize = 100;
/// See [`PAGE_DEFAULT`].
pub const PAGE_MAX: usize = 1000;

/// `GET /videos?limit=N&after=ID`: a page of video records in video-id order,
/// `{"videos": [...], "next": ID or null}`; pass `next` as `after` for the following page.
/// `limit` 1 to 1000, default 100. The ids come from the catalog index
/// ([`crate::storage::Storage::catalog_page`]: on S3 one listing from `after`, whatever the
/// library's size) and only the page's records are read.
///
/// Errors: `400` for a `limit` out of range or an `after` that is not a video id.
async fn list(
    app: App,
    q: std::collections::HashMap<String, String>,
) -> Result<Response<Bytes>, ApiError> {
    let limit = match q.get("limit") {
        None => PAGE_DEFAULT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be a number from 1 to {PAGE_MAX}"))
            })?,
    };
    let after = match q.get("after") {
        None => None,
        Some(a) if keys::valid_video_id(a) => Some(a.as_str()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "after must be a video id (32 lowercase hex digits), as given in next".into(),
            ))
        }
    };
    let storage = &app.node.ctx.storage;
    let (ids, more) = storage.catalog_page(after, limit).await?;
    let next = more.then(|| ids.last().cloned()).flatten();
    let reader = storage.clone();
    let records: Vec<_> = futures::stream::iter(ids.to_vec())
        .map(move |id| {
            let s = reader.clone();
            async move { s.load_record(&id).await }
        })
        .buffered(16)
        .collect()
        .await;
    let mut videos = Vec::with_capacity(ids.len());
    for r in records {
        if let Some(r) = r? {
            let progress = if r.state == VideoState::Ready {
                1.0
            } else {
                0.0
            };
            videos.push(view(&r, progress));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "videos": videos, "next": next }),
    ))
}

/// The video's events: this node's, plus (unless `local_only`) every other live node's,
/// fetched over HTTP, merged oldest first. Each event names the node that wrote it; the logs
/// themselves stay node-local (seed section 7: logs are not replicated).
async fn events(app: App, id: String, local_only: bool) -> Result<Response<Bytes>, ApiError> {
    let record = record(&app, &id).await?;
    let ctx = &app.node.ctx;
    let mut events: Vec<Value> = ctx
        .events
        .for_video(&record.video_id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("event log: {e}")))?
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    let mut unreachable = Vec::new();
    if !local_only {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let peers: Vec<_> = ctx
            .cluster
            .peers()
            .into_iter()
            .filter(|m| m.live)
            .map(|m| {
                let url = format!("http://{}/videos/{id}/events?scope=local", m.http);
                let client = client.clone();
                async move { (m.id, client.get(url).send().await) }
            })
            .collect();
        for (node, resp) in futures::future::join_all(peers).await {
            match resp {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) => events.extend(v["events"].as_array().cloned().unwrap_or_default()),
                    Err(_) => unreachable.push(node),
                },
                Err(_) => unreachable.push(node),
            }
        }
        events.sort_by_key(|e| {
            (
                e["ts_ms"].as_i64().unwrap_or(0),
                e["seq"].as_i64().unwrap_or(0),
            )
        });
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "video_id": record.video_id, "events": events, "unreachable_nodes": unreachable }),
    ))
}
