//! HTTP (warp): translates requests into storage reads and actor messages, and errors into
//! statuses. Every error body is JSON `{"error": "..."}`.
//!
//! Routes:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/health` | liveness, node id, connections held and refused, playback sessions open, bytes sent with `sendfile`, playback records shed, free memory for upload bodies (`limits.upload_buffer_mib`) and free spool (`limits.upload_spool_mib`; `null` where none is used) |
//! | GET | `/cluster` | members, liveness, each one's share of the ring |
//! | POST, PUT | `/upload` | the body (or multipart field `file`) is the source; `Reel-Content-Sha256` dedupes before transfer |
//! | OPTIONS, POST | `/files/` | tus 1.0.0 discovery and creation ([`tus`]) |
//! | HEAD, PATCH, DELETE | `/files/{upload_id}` | tus offset, append, termination |
//! | GET | `/videos` | every video's record |
//! | GET | `/videos/{id}` | record + live progress |
//! | GET | `/videos/{id}/events` | the video's event log on this node, oldest first |
//! | GET | `/videos/{id}/master.m3u8` | multivariant playlist (`409` until ready) |
//! | GET | `/videos/{id}/{rendition}/index.m3u8`, `init.mp4`, `NNNNN.m4s` | media playlist, init segment, segments |
//! | GET | `/videos/{id}/s/{session}/{rendition}/...` | the same files within a playback session (`docs/streaming.md`) |
//!
//! A connection's `GET` and `HEAD` requests of the two segment paths are answered at its
//! front ([`front`], without hyper: most of a node's requests); from the first request the
//! front does not take, hyper serves the connection, and the node's service ([`serve`]) hands
//! the same two paths straight to their handlers (`stream::fast_route`: warp's chain of
//! filters cost as much as the handler) and every other request to warp's [`routes`], which
//! answer those paths the same way.

pub mod front;
pub mod linger;
pub mod listener;
pub mod proxy;
pub mod range;
mod stream;
pub mod tus;
mod upload;
mod videos;
pub mod zerocopy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::actors::node::Node;
use crate::config::Config;
use crate::storage::StorageError;

/// What handlers share: one reference-counted [`AppState`], so the clone every request's
/// filters make is one atomic increment, not one per actor reference inside it (the
/// per-request clones and drops were about 3 % of a cache-hit segment request's CPU).
#[derive(Clone)]
pub struct App(Arc<AppState>);

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

/// The node, its configuration and its connection admission, behind [`App`].
pub struct AppState {
    /// The node's actors and context.
    pub node: Node,
    /// The node's configuration.
    pub config: Arc<Config>,
    /// The connections the node holds and the caps it applies ([`listener`]).
    pub admission: Arc<listener::Admission>,
}

impl App {
    /// Build the handler state. (Ready videos are remembered by the node's
    /// [`Streaming`](crate::streaming::Streaming) catalog, so serving a segment does not read the
    /// record each time.)
    ///
    /// Raises the process's open-file limit to its hard limit, and caps connections at what
    /// it allows ([`listener::effective_capacity`]).
    pub fn new(node: Node, config: Arc<Config>) -> Self {
        let limits = &config.limits;
        let fds = listener::raise_open_file_limit();
        let capacity = listener::effective_capacity(limits.max_connections, fds);
        if capacity < limits.max_connections {
            tracing::warn!(
                "at most {capacity} connections (the open-file limit is {}); limits.max_connections says {}",
                fds.unwrap_or(0),
                limits.max_connections
            );
        }
        let admission = listener::Admission::new(capacity, limits.max_connections_per_address);
        Self(Arc::new(AppState {
            node,
            config,
            admission,
        }))
    }
}

/// Errors a request can end with. [`ApiError::status`] is the one place they map to statuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed request (bad id, bad header, empty or interrupted upload).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown video, rendition or file.
    #[error("{0}")]
    NotFound(String),
    /// The video exists but is not ready to stream.
    #[error("{0}")]
    NotReady(String),
    /// The body is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The body is plainly not a video.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// An actor did not answer in time, or the node is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The node a request was forwarded to holds it without answering, and its `/health`
    /// does not answer either (`http::proxy::forward`): `504`.
    #[error("{0}")]
    GatewayTimeout(String),
    /// The request conflicts with the resource's state (tus: `Upload-Offset` is not the
    /// stored offset).
    #[error("{0}")]
    Conflict(String),
    /// Another request holds the resource (tus: a second concurrent `PATCH` of one upload).
    #[error("{0}")]
    Locked(String),
    /// The client stopped sending its body (`limits.body_idle_seconds` without a byte).
    #[error("{0}")]
    RequestTimeout(String),
    /// A required precondition header is wrong (tus: `Tus-Resumable` is not `1.0.0`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The received bytes do not match their declared checksum (tus 1.0.0 "Checksum"
    /// extension: `460 Checksum Mismatch`); the bytes were discarded.
    #[error("{0}")]
    ChecksumMismatch(String),
    /// The object store failed.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> Self {
        match e {
            crate::ingest::IngestError::Storage(s) => ApiError::Storage(s),
            crate::ingest::IngestError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotReady(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Locked(_) => StatusCode::LOCKED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            // tus 1.0.0, Checksum extension: "460 Checksum Mismatch".
            ApiError::ChecksumMismatch(_) => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::Storage(StorageError::NotFound(_)) => StatusCode::NOT_FOUND,
            // The store failed or could not be reached: the client may retry.
            ApiError::Storage(StorageError::Backend(_)) => StatusCode::SERVICE_UNAVAILABLE,
            // RFC 4918 section 11.5: the server cannot store what the request needs.
            ApiError::Storage(StorageError::Full(_)) => StatusCode::INSUFFICIENT_STORAGE,
            // The node's memory for upload bodies stayed spent: a retry shortly may get in.
            ApiError::Storage(StorageError::Busy(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(StorageError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A JSON response with a status.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What a client is told when the object store fails: never the store's own message, which
/// names its internal URL (issue 10).
pub const STORE_UNAVAILABLE: &str = "the object store is unreachable; retry shortly";

/// What a client is told when the object store is full (`507`): no `Retry-After`, since a
/// retry fails the same way until someone frees space.
pub const STORE_FULL: &str =
    "the object store has no space left; nothing was stored: free space on it, then send it again";

/// Seconds a client is asked to wait (`Retry-After`) when the store is unreachable.
pub const STORE_RETRY_AFTER_SECONDS: u32 = 5;

fn error_response(e: &ApiError) -> Response<Bytes> {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!("request failed: {e}");
    }
    if let ApiError::Storage(StorageError::Full(_)) = e {
        return json_response(status, &json!({ "error": STORE_FULL }));
    }
    if let ApiError::Storage(StorageError::Busy(why)) = e {
        let answer = json!({ "error": format!("the node is receiving as many upload bodies as it has memory for: {why}; nothing of this request's body was stored: send it again shortly") });
        return retry_after(json_response(status, &answer), STORE_RETRY_AFTER_SECONDS);
    }
    if let ApiError::Storage(StorageError::Backend(_)) = e {
        let answer = json!({ "error": STORE_UNAVAILABLE });
        return retry_after(json_response(status, &answer), STORE_RETRY_AFTER_SECONDS);
    }
    let r = json_response(status, &json!({ "error": e.to_string() }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Every 503 is a transient state (a full node, a busy peer): say when to come back.
        return retry_after(r, 1);
    }
    r
}

/// `r` with `Retry-After: {seconds}` (RFC 9110 section 10.2.3).
fn retry_after(mut r: Response<Bytes>, seconds: u32) -> Response<Bytes> {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    r
}

/// Turn a handler's result into a response.
pub(crate) fn respond(r: Result<Response<Bytes>, ApiError>) -> Result<Response<Bytes>, Infallible> {
    Ok(r.unwrap_or_else(|e| error_response(&e)))
}

async fn recover(rej: Rejection) -> Result<Response<Bytes>, Infallible> {
    let (status, msg) = if rej.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route".to_string())
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
        )
    } else if let Some(e) = rej.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rej.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rej.find::<warp::reject::PayloadTooLarge>() {
        (StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
    } else if let Some(e) = rej.find::<warp::reject::UnsupportedMediaType>() {
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
    } else if let Some(e) = rej.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::warn!("unhandled rejection: {rej:?}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_string(),
        )
    };
    Ok(json_response(status, &json!({ "error": msg })))
}

/// Every route, with JSON errors for unmatched requests.
pub fn routes(app: App) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: App| {
            json_response(
                StatusCode::OK,
                &json!({
                    "status": "ok",
                    "node": app.config.node_id,
                    "connections": app.admission.figures(),
                    "playback_log_shed": app.node.ctx.streaming.log.shed_total(),
                    "bytes_sent_from_files": zerocopy::sent_from_files(),
                    "sessions": app.node.refs.session_table.len(),
                    "upload_buffer_free_bytes": app.node.ctx.storage.write_budget().available(),
                    "upload_spool_free_bytes": app.node.ctx.storage.spool().map(|s| s.available()),
                }),
            )
        });
    // Readiness, for load balancers: 503 while the object store cannot be reached. `/health`
    // stays liveness (the process answers).
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_app.clone())
        .and_then(|app: App| async move {
            let up = app
                .node
                .ctx
                .storage
                .reachable(std::time::Duration::from_secs(2))
                .await;
            let r = if up {
                json_response(
                    StatusCode::OK,
                    &json!({ "status": "ready", "node": app.config.node_id }),
                )
            } else {
                error_response(&ApiError::Storage(StorageError::Backend(
                    "readiness probe".into(),
                )))
            };
            Ok::<_, Rejection>(r)
        });
    let cluster = warp::path!("cluster")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: App| json_response(StatusCode::OK, &app.node.ctx.cluster.describe()));
    // Before any route: a Reel-Forwarded-By that no peer signed is answered 400 here, so
    // every route may trust `proxy::was_forwarded`.
    // Requests without the header (all of a player's) pass at the cost of one header lookup.
    let forged = warp::header::optional::<String>(proxy::FORWARDED_BY)
        .and_then(|v: Option<String>| async move {
            match v {
                Some(_) => Ok(()),
                None => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(warp::header::headers_cloned())
        .and(warp::method())
        .and(proxy::path_and_query())
        .and(with_app.clone())
        .and_then(
            |headers: warp::http::HeaderMap,
             method: warp::http::Method,
             target: String,
             app: App| async move {
                let secret = app.config.forward_secret.as_ref().map(|s| s.expose());
                let me = app.node.ctx.cluster.self_id();
                let now = crate::model::now_ms();
                match proxy::check(secret, me, &method, &target, &headers, now) {
                    Ok(()) => Err(warp::reject::not_found()),
                    Err(e) => match respond(Err(e)) {
                        Ok(r) => Ok::<Response<Bytes>, Rejection>(r),
                        Err(never) => match never {},
                    },
                }
            },
        );
    // Streaming first: segment requests are most of a node's requests, and warp tries routes
    // in order.
    forged
        .or(stream::routes(with_app.clone()))
        .unify()
        .or(health)
        .unify()
        .or(ready)
        .unify()
        .or(cluster)
        .unify()
        .or(upload::routes(with_app.clone()))
        .unify()
        .or(tus::routes(with_app.clone()))
        .unify()
        .or(videos::routes(with_app))
        .unify()
        .recover(recover)
        .unify()
        .with(warp::trace::request())
}

/// Serve `app` on an already bound listener until `shutdown` completes, with the connection
/// limits of `app.config.limits` ([`listener`]): a cap on open connections (no more than the
/// open-file limit allows), one per address, a header read timeout and a header size cap.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let limits = app.config.limits.clone();
    let admission = app.admission.clone();
    let service = Service {
        warp: hyper_util::service::TowerToHyperService::new(warp::service(routes(app.clone()))),
        app,
    };
    listener::serve_connections(
        listener,
        admission,
        listener::http1_builder(&limits),
        FrontDoor {
            app: service.app.clone(),
        },
        listener::front_limits(&limits),
        service,
        listener::connection_threads(),
        limits.shutdown_drain(),
        shutdown,
    )
    .await;
}

/// The node's HTTP service: a request [`stream::fast_route`] takes goes straight to its
/// handler; every other request goes through warp's [`routes`].
///
/// Connections are served on the listener's connection threads ([`listener::serve_connections`]),
/// but the node's actors, uploads and reads belong on the node's runtime, in its supervision
/// tree, whatever connection asked for them: so only a cache hit ([`stream::serve_hit`]),
/// which never waits, is answered on the connection's thread, and every other request's
/// handler is spawned on the node's runtime (the streaming side's
/// [`NodeTasks`](crate::streaming::NodeTasks), where its cache reads and read-ahead run too),
/// and aborted if the connection drops it, as it would be dropped in place.
#[derive(Clone)]
struct Service<W> {
    app: App,
    warp: W,
}

impl<W> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service<W>
where
    W: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = warp::reply::Response,
        Error = Infallible,
    >,
    W::Future: Send + 'static,
{
    type Response = warp::reply::Response;
    type Error = Infallible;
    /// Boxed on both paths: hyper moves the future into its connection's state, and warp's
    /// is large (an `Either` of the two copied it, about 1 % of the node's CPU per request).
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        match stream::FastRequest::take(req, &self.app.node.ctx.node_id) {
            Ok(fast) => {
                if let Some(r) = stream::serve_hit(&self.app, &fast) {
                    return Box::pin(std::future::ready(Ok(r.into_response())));
                }
                let app = self.app.clone();
                on_node_runtime(&self.app.node.ctx.streaming.tasks, async move {
                    Ok(stream::serve_fast(app, fast).await.into_response())
                })
            }
            Err(req) => on_node_runtime(&self.app.node.ctx.streaming.tasks, self.warp.call(req)),
        }
    }
}

/// The node's [`front::Front`]: the [`stream::FrontRequest`]s of requests read at a
/// connection's front, answered as [`Service`] answers them (a cache hit at once, on the
/// connection's thread; the rest by a task on the node's runtime).
#[derive(Clone)]
struct FrontDoor {
    app: App,
}

impl front::Front for FrontDoor {
    type Memo = stream::Memo;
    type Ready = stream::ObjectAnswer;

    fn answer(
        &self,
        memo: &mut stream::Memo,
        head: &front::Head<'_>,
    ) -> Option<front::Answer<stream::ObjectAnswer>> {
        let req = stream::FrontRequest::of(head, &self.app.node.ctx.node_id)?;
        if let Some(r) = req.serve_hit(&self.app, memo) {
            return Some(front::Answer::Now(r));
        }
        let fast = req.into_owned();
        let app = self.app.clone();
        let task = tokio_util::task::AbortOnDropHandle::new(
            self.app
                .node
                .ctx
                .streaming
                .tasks
                .spawn(stream::serve_fast(app, fast)),
        );
        Some(front::Answer::Later(Box::pin(async move {
            task.await.unwrap_or_else(handler_failed)
        })))
    }
}

/// `handler` run as a task of the node's runtime (`tasks`), its answer awaited where the
/// connection runs; the task is aborted when the connection drops the returned future (the
/// client went away), as the handler would be dropped if it ran in place. A handler that
/// panicked answers `500`.
fn on_node_runtime<F>(
    tasks: &crate::streaming::NodeTasks,
    handler: F,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<warp::reply::Response, Infallible>> + Send>,
>
where
    F: std::future::Future<Output = Result<warp::reply::Response, Infallible>> + Send + 'static,
{
    let task = tokio_util::task::AbortOnDropHandle::new(tasks.spawn(handler));
    Box::pin(async move {
        match task.await {
            Ok(answer) => answer,
            Err(e) => Ok(handler_failed(e).into_response()),
        }
    })
}

/// The answer when a request's handler task failed (it panicked): `500`, logged.
fn handler_failed(e: tokio::task::JoinError) -> Response<Bytes> {
    tracing::error!("request handler failed: {e}");
    let answer = json!({ "error": "the request's handler failed" });
    json_response(StatusCode::INTERNAL_SERVER_ERROR, &answer)
}

/// The address a listener is bound to, for logs.
pub fn local_addr(listener: &tokio::net::TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_store_is_a_507_that_names_no_path_and_asks_no_retry() {
        let e = ApiError::Storage(StorageError::Full(
            "Unable to copy data to file /srv/reel-data/objects/uploads/direct/ab#1: No space left on device".into(),
        ));
        let r = error_response(&e);
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let body = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(body.contains(STORE_FULL), "{body}");
        assert!(
            !body.contains("/srv"),
            "the store's own message stays in the log: {body}"
        );
        // A store that fails otherwise is still a 503 to retry.
        let r = error_response(&ApiError::Storage(StorageError::Backend("x".into())));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(header::RETRY_AFTER).is_some());
    }

    /// A runtime standing for a node's, its workers named so a test can tell where a task ran.
    fn node_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("node-runtime")
            .enable_all()
            .build()
            .unwrap()
    }

    /// Run `f` on a thread of its own with a single-threaded runtime, as a connection thread.
    fn on_connection_thread<T: Send + 'static>(
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        std::thread::Builder::new()
            .name("reel-conn-0".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    /// A handler asked for on a connection thread runs on the node's runtime, and its answer
    /// comes back to the connection.
    #[test]
    fn a_handler_runs_on_the_node_runtime() {
        let node = node_runtime();
        let handle = node.block_on(async { crate::streaming::NodeTasks::current() });
        let answer = on_connection_thread(async move {
            on_node_runtime(&handle, async {
                let name = std::thread::current().name().unwrap_or("").to_string();
                Ok(Response::new(Bytes::from(name)).into_response())
            })
            .await
            .unwrap()
        });
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(answer.into_body()))
                .unwrap()
                .to_bytes();
        assert_eq!(body, "node-runtime");
    }

    /// A connection that goes away drops its request's future; the handler on the node's
    /// runtime is then stopped, as it would be were it running in place.
    #[test]
    fn a_dropped_request_stops_its_handler() {
        let node = node_runtime();
        let handle = node.block_on(async { crate::streaming::NodeTasks::current() });
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        /// Says when the handler's future is dropped.
        struct Tell(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.take().map(|t| t.send(()));
            }
        }
        on_connection_thread(async move {
            let request = on_node_runtime(&handle, async move {
                let _tell = Tell(Some(dropped_tx));
                started_tx.send(()).unwrap();
                std::future::pending::<()>().await;
                unreachable!()
            });
            started.await.unwrap();
            drop(request);
            tokio::time::timeout(std::time::Duration::from_secs(10), dropped)
                .await
                .expect("the handler is stopped once its request is dropped")
                .unwrap();
        });
    }
}
