//! The tus 1.0.0 resumable upload protocol at `/files/`: core, plus the Creation,
//! Creation With Upload, Termination, Checksum (`sha1`, `sha256`) and Expiration extensions
//! (<https://tus.io/protocols/resumable-upload>; section names below are the spec's).
//!
//! | method | path | what | success |
//! |---|---|---|---|
//! | OPTIONS | `/files/`, `/files/{id}` | discovery: `Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm` | 204 |
//! | POST | `/files/` | Creation (`Upload-Length`, `Upload-Metadata`); with a body of type `application/offset+octet-stream`, Creation With Upload | 201 + `Location` |
//! | HEAD | `/files/{id}` | `Upload-Offset`, `Upload-Length`, `Upload-Metadata`, `Upload-Expires`; once complete `Reel-Video-Id`, `Reel-Video-State` | 200 |
//! | PATCH | `/files/{id}` | append at `Upload-Offset` (optional `Upload-Checksum`) | 204 + new `Upload-Offset` |
//! | DELETE | `/files/{id}` | Termination: the upload and its parts are deleted | 204 |
//!
//! Every answer carries `Tus-Resumable: 1.0.0` and CORS headers for browser clients; errors also
//! carry a JSON body `{"error": ...}`. `POST /files/{id}` with `X-HTTP-Method-Override: PATCH`
//! (or `DELETE`, `HEAD`) is that method (tus 1.0.0 core).
//!
//! Metadata keys reel reads (values base64 as tus requires): `filename`, `filetype` (a
//! `text/*` or `image/*` type is refused at creation with `415`), `sha256` (the SHA-256 of the
//! whole file, 64 hex digits: dedupe before transfer, and checked on completion).
//!
//! Dedupe before transfer: when `sha256` names bytes reel already holds, creation answers `201`
//! with a `Location` whose upload is already complete: `Upload-Offset` equals `Upload-Length`,
//! and `Reel-Video-Id` names the existing video. A standard tus client then `HEAD`s (or looks at
//! the offset), sees nothing is left to send, and finishes without sending a byte.
//!
//! Errors, each before anything is stored: `Tus-Resumable` other than `1.0.0` → 412 (with
//! `Tus-Version`); `PATCH` without `Content-Type: application/offset+octet-stream` → 415;
//! `Upload-Offset` or `Upload-Length` missing, negative or not a number → 400; `Upload-Offset`
//! not the stored offset → 409; unknown or malformed upload id → 404; `Upload-Length` over
//! `limits.max_upload_bytes` → 413; `Upload-Checksum` mismatch → 460 (the chunk is discarded);
//! a second `PATCH` while one runs → 423; more bytes than `Upload-Length` → 400 (discarded).
//! The first bytes (up to 4 KiB) are sniffed as they arrive: plainly not a video → 415 and the
//! upload is terminated.
//!
//! Cluster: a request for `/files/{id}` that reaches a node other than the upload's (see
//! [`crate::actors::upload_supervisor::route_upload`]) is forwarded there, body streaming
//! through (`http::proxy`), before any handler here reads it.

use std::convert::Infallible;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use ractor::rpc::CallResult;
use ractor::ActorRef;
use sha1::Digest as _;
use warp::http::header::{HeaderMap, HeaderName, HeaderValue};
use warp::http::{Method, Response, StatusCode};
use warp::{Filter, Rejection};

use crate::actors::upload::{Begun, Lease, PatchOutcome, UploadError, UploadMsg, CALL_TIMEOUT};
use crate::actors::upload_supervisor::{
    call_upload, route_upload, UploadRoute, UploadSupervisorMsg,
};
use crate::http::linger::{self, Body};
use crate::http::proxy::{self, Raced};
use crate::http::upload::{next_chunk, parse_sha256, BodyNext};
use crate::http::{respond, ApiError, App};
use crate::media::sniff::{Head, Sniff, SNIFF_BYTES};
use crate::model::now_ms;
use crate::storage::keys;
use crate::storage::uploads::{Part, UploadInfo};

/// The protocol version reel speaks (`Tus-Resumable`, `Tus-Version`).
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions reel implements (`Tus-Extension`).
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// Checksum algorithms accepted in `Upload-Checksum` (`Tus-Checksum-Algorithm`).
pub const TUS_CHECKSUMS: &str = "sha1,sha256";
/// The only body type of `PATCH` (tus 1.0.0 core).
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Response header naming the video a completed upload became.
pub const VIDEO_ID: &str = "reel-video-id";
/// Response header with that video's lifecycle state when the upload completed.
pub const VIDEO_STATE: &str = "reel-video-state";

pub(super) fn routes(
    with_app: impl Filter<Extract = (App,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    let collection = warp::path("files").and(warp::path::end());
    let item = warp::path("files")
        .and(warp::path::param::<String>())
        .and(warp::path::end());
    // Path before method: a path that is no tus resource ends as 404, not 405.
    let options = collection
        .and(warp::options())
        .and(with_app.clone())
        .map(|app: App| options(&app))
        .or(item
            .and(warp::options())
            .and(with_app.clone())
            .map(|_: String, app: App| options(&app)))
        .unify();
    let create = collection
        .and(warp::post())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(|app: App, headers: HeaderMap, body| async move {
            tus_respond(create(app, headers, linger::body(body)).await)
        });
    // Cluster: requests for an upload owned by another node are forwarded there whole.
    let forward = item
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and_then(|id: String, app: App, headers: HeaderMap| async move {
            if !keys::valid_upload_id(&id) || proxy::was_forwarded(&headers) {
                return Err(warp::reject::not_found());
            }
            match route_upload(&app.node.ctx.cluster, &id) {
                UploadRoute::Node(node) => Ok((app, id, node, headers)),
                UploadRoute::Here => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(warp::method())
        .and(proxy::path_and_query())
        .and(warp::body::stream())
        .and_then(
            |app: App, id: String, node, headers, method, target: String, body| async move {
                let to = Forward {
                    id: &id,
                    node,
                    method,
                    target: &target,
                };
                tus_respond(forward_upload(&app, to, headers, linger::body(body)).await)
            },
        );
    let head = item
        .and(warp::head())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and_then(|id: String, app: App, headers: HeaderMap| async move {
            tus_respond(head(app, id, headers).await)
        });
    let patch = item
        .and(warp::patch())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(
            |id: String, app: App, headers: HeaderMap, body| async move {
                tus_respond(patch(app, id, headers, linger::body(body)).await)
            },
        );
    // tus 1.0.0 core, "X-HTTP-Method-Override": a client that cannot send PATCH or DELETE
    // POSTs with the method in this header.
    let overridden = item
        .and(warp::post())
        .and(with_app.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(
            |id: String, app: App, headers: HeaderMap, body| async move {
                let method = headers
                    .get("x-http-method-override")
                    .and_then(|v| v.to_str().ok())
                    .map(|m| m.trim().to_ascii_uppercase());
                tus_respond(match method.as_deref() {
                    Some("PATCH") => self::patch(app, id, headers, linger::body(body)).await,
                    Some("DELETE") => terminate(app, id, headers).await,
                    Some("HEAD") => self::head(app, id, headers).await,
                    _ => Err(ApiError::BadRequest(
                        "POST to an upload needs X-HTTP-Method-Override: PATCH, DELETE or HEAD"
                            .into(),
                    )),
                })
            },
        );
    let delete = item
        .and(warp::delete())
        .and(with_app)
        .and(warp::header::headers_cloned())
        .and_then(|id: String, app: App, headers: HeaderMap| async move {
            tus_respond(terminate(app, id, headers).await)
        });
    options
        .or(create)
        .unify()
        .or(forward)
        .unify()
        .or(head)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(overridden)
        .unify()
}

/// A tus request for an upload this node does not serve, on its way to the node that does.
struct Forward<'a> {
    /// The upload's id.
    id: &'a str,
    /// Where [`route_upload`] sends it.
    node: String,
    /// The request's method.
    method: Method,
    /// Its path and query.
    target: &'a str,
}

/// Forward `to` (with `headers` and `body`) to the upload's node, raced against this node's
/// view of that node, so that a request to a home that hangs or dies is not held or lost
/// (as `stream::forward_session` does for a session's requests):
/// - a `HEAD` (the offset a client asks before it resumes; no body, no effect, safe to send
///   again) whose forward fails waits up to [`proxy::forward_retry_wait`] for the view to drop
///   the node and is then routed again ([`route_upload`]): answered here when the upload has
///   moved here (taken over from the object store), or forwarded to its new node; while the
///   view still holds the node live it is forwarded again, [`proxy::MAX_FORWARDS`] times at
///   most. A `HEAD` whose node hangs is routed again as soon as the view fences that node;
///   one whose node holds it while the view keeps the node live (heartbeats answered, HTTP
///   not) is answered `504` ([`proxy::forward`]'s bound).
/// - any other request (a `PATCH`, whose body cannot be sent twice; a `DELETE`) is answered
///   `503` with `Retry-After` when its forward fails or the view drops its node first: the
///   client asks the offset again with `HEAD` and resumes from there (tus 1.0, core protocol,
///   "The Upload-Offset header"), as after any interrupted `PATCH`. Before, a `PATCH` to a
///   hung home waited for as long as its client did.
async fn forward_upload(
    app: &App,
    mut to: Forward<'_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response<Bytes>, ApiError> {
    let ctx = &app.node.ctx;
    let resend = to.method == Method::HEAD;
    let mut body = Some(body);
    let mut changes = ctx.cluster.changes();
    // A request that cannot be sent again does not wait for the view after a failure.
    let wait = if resend {
        proxy::forward_retry_wait(app.config.cluster.as_ref())
    } else {
        Duration::ZERO
    };
    let mut failure = None;
    for _ in 0..proxy::MAX_FORWARDS {
        let base = proxy::base_of(app, &to.node);
        let send: Body = match body.take() {
            Some(b) if !resend => b,
            _ => proxy::empty_body().boxed(),
        };
        let node = to.node.as_str();
        let method = to.method.clone();
        let forward = proxy::forward(app, node, base, method, to.target, &headers, send);
        let live = || ctx.cluster.is_live(node);
        match proxy::race_forward(&mut changes, live, wait, forward).await {
            Raced::Answer(answer) => return Ok(answer),
            Raced::Dropped(None) if !resend => {
                return Err(ApiError::Unavailable(format!(
                    "upload {}: node {node} left the cluster while this request was on its way \
                     there; ask the offset (HEAD) and resume",
                    to.id
                )))
            }
            Raced::Dropped(Some(e)) | Raced::Failed(e) if !resend => return Err(e),
            // A node that holds requests without a sign of life would hold the next too.
            Raced::Failed(e @ ApiError::GatewayTimeout(_)) => return Err(e),
            Raced::Failed(e) => {
                failure = Some(e);
                continue;
            }
            Raced::Dropped(e) => failure = e.or(failure),
        }
        tracing::info!(
            upload = %to.id,
            from = %to.node,
            "a forwarded tus HEAD's node left this node's view; routing it again"
        );
        match route_upload(&ctx.cluster, to.id) {
            UploadRoute::Node(next) => to.node = next,
            UploadRoute::Here => return head(app.clone(), to.id.to_string(), headers).await,
        }
    }
    Err(failure.unwrap_or_else(|| {
        ApiError::Unavailable(format!(
            "upload {}: the cluster changed {} times while its HEAD was forwarded; retry",
            to.id,
            proxy::MAX_FORWARDS
        ))
    }))
}

fn tus_respond(r: Result<Response<Bytes>, ApiError>) -> Result<Response<Bytes>, Infallible> {
    let mut resp = respond(r)?;
    let h = resp.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    // Browser clients (tus-js-client, Uppy) on another origin must be able to read these.
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(CORS_EXPOSE),
    );
    if resp.status() == StatusCode::PRECONDITION_FAILED {
        resp.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    Ok(resp)
}

fn empty(status: StatusCode) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = status;
    r
}

fn set(r: &mut Response<Bytes>, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        r.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

fn options(app: &App) -> Response<Bytes> {
    let mut r = empty(StatusCode::NO_CONTENT);
    set(&mut r, "tus-resumable", TUS_VERSION);
    set(&mut r, "tus-version", TUS_VERSION);
    set(&mut r, "tus-extension", TUS_EXTENSIONS);
    set(&mut r, "tus-max-size", app.config.limits.max_upload_bytes);
    set(&mut r, "tus-checksum-algorithm", TUS_CHECKSUMS);
    // CORS preflight (browser tus clients).
    set(&mut r, "access-control-allow-origin", "*");
    set(
        &mut r,
        "access-control-allow-methods",
        "POST, HEAD, PATCH, DELETE, OPTIONS",
    );
    set(&mut r, "access-control-allow-headers", CORS_ALLOW);
    set(&mut r, "access-control-expose-headers", CORS_EXPOSE);
    set(&mut r, "access-control-max-age", 86400);
    r
}

/// Request headers a browser tus client sends (CORS preflight).
const CORS_ALLOW: &str = "Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Offset, \
    Upload-Checksum, Upload-Defer-Length, Upload-Concat, Content-Type, X-HTTP-Method-Override, \
    X-Requested-With, Reel-Content-Sha256";

/// Response headers a browser tus client must be able to read.
const CORS_EXPOSE: &str = "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
    Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, \
    Reel-Video-Id, Reel-Video-State";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::BadRequest(format!("{name} is not valid text"))),
    }
}

/// tus 1.0.0 core, "Tus-Resumable": every request but `OPTIONS` must name version 1.0.0.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match header(headers, "tus-resumable")? {
        Some(TUS_VERSION) => Ok(()),
        Some(other) => Err(ApiError::PreconditionFailed(format!(
            "Tus-Resumable {other} is not supported; this server speaks tus {TUS_VERSION}"
        ))),
        None => Err(ApiError::PreconditionFailed(format!(
            "Tus-Resumable: {TUS_VERSION} is required"
        ))),
    }
}

/// A non-negative integer header (`Upload-Offset`, `Upload-Length`): digits only.
fn parse_u64_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(text) = header(headers, name)? else {
        return Ok(None);
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "{name} must be a non-negative integer, not {text:?}"
        )));
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("{name} {text} is too large")))
}

/// The tus `Location` of upload `id`: under the configured public URL; else absolute only when
/// the request's `Host` is this node's own listen address (so a test or a client talking to
/// the node directly gets a URL it can use as is); else relative, which tus clients resolve
/// against the URL they posted to (RFC 9110 section 10.2.2). A client-chosen `Host` is never
/// echoed: it would send the client's next PATCH wherever that header said (issue 10).
pub fn upload_location(
    public_url: Option<&str>,
    listen: std::net::SocketAddr,
    host: Option<&str>,
    id: &str,
) -> String {
    if let Some(base) = public_url {
        return format!("{base}/files/{id}");
    }
    match host {
        Some(h) if h == listen.to_string() => format!("http://{h}/files/{id}"),
        _ => format!("/files/{id}"),
    }
}

/// The largest `Upload-Metadata` header accepted, bytes: a file name and a few keys fit many
/// times over; 100 KB of metadata is an attack, not an upload (issue 10).
pub const MAX_METADATA_BYTES: usize = 4096;

/// The most `Upload-Metadata` keys accepted.
pub const MAX_METADATA_KEYS: usize = 32;

/// tus 1.0.0 "Creation": `Upload-Metadata` is `key base64,key base64,key` with unique keys,
/// at most [`MAX_METADATA_BYTES`] and [`MAX_METADATA_KEYS`].
pub fn parse_metadata(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    if text.len() > MAX_METADATA_BYTES {
        return Err(format!(
            "Upload-Metadata is {} bytes; at most {MAX_METADATA_BYTES} are accepted",
            text.len()
        ));
    }
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.split(' ').filter(|s| !s.is_empty());
        let key = it.next().unwrap_or_default();
        let value = it.next();
        if it.next().is_some() {
            return Err(format!(
                "Upload-Metadata pair {pair:?} has more than a key and a value"
            ));
        }
        if !key.is_ascii() || key.is_empty() {
            return Err(format!("Upload-Metadata key {key:?} must be ASCII"));
        }
        let value = match value {
            None => Vec::new(),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| format!("Upload-Metadata value of {key} is not base64"))?,
        };
        if out.iter().any(|(k, _)| k == key) {
            return Err(format!("Upload-Metadata key {key} appears twice"));
        }
        if out.len() == MAX_METADATA_KEYS {
            return Err(format!(
                "Upload-Metadata has more than {MAX_METADATA_KEYS} keys"
            ));
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// A declared chunk checksum (tus 1.0.0 "Checksum": `Upload-Checksum: sha1 <base64>`).
#[derive(Debug, Clone)]
enum Checksum {
    Sha1(Vec<u8>),
    Sha256(Vec<u8>),
}

fn parse_checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(text) = header(headers, "upload-checksum")? else {
        return Ok(None);
    };
    let (algo, value) = text.split_once(' ').ok_or_else(|| {
        ApiError::BadRequest("Upload-Checksum must be `<algorithm> <base64 digest>`".into())
    })?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| ApiError::BadRequest("Upload-Checksum digest is not base64".into()))?;
    match algo {
        "sha1" if digest.len() == 20 => Ok(Some(Checksum::Sha1(digest))),
        "sha256" if digest.len() == 32 => Ok(Some(Checksum::Sha256(digest))),
        "sha1" | "sha256" => Err(ApiError::BadRequest(format!(
            "Upload-Checksum {algo} digest has the wrong length"
        ))),
        other => Err(ApiError::BadRequest(format!(
            "Upload-Checksum algorithm {other} is not supported (supported: {TUS_CHECKSUMS})"
        ))),
    }
}

enum ChunkHasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl ChunkHasher {
    fn new(c: &Checksum) -> Self {
        match c {
            Checksum::Sha1(_) => Self::Sha1(sha1::Sha1::new()),
            Checksum::Sha256(_) => Self::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(b),
            Self::Sha256(h) => h.update(b),
        }
    }
    fn matches(self, c: &Checksum) -> bool {
        match (self, c) {
            (Self::Sha1(h), Checksum::Sha1(d)) => h.finalize().as_slice() == d.as_slice(),
            (Self::Sha256(h), Checksum::Sha256(d)) => h.finalize().as_slice() == d.as_slice(),
            _ => false,
        }
    }
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// The headers every state-bearing answer carries: offset, expiry, and the video once complete.
fn with_state(mut r: Response<Bytes>, info: &UploadInfo) -> Response<Bytes> {
    set(&mut r, "upload-offset", info.offset);
    set(&mut r, "upload-expires", http_date(info.expires_ms));
    if let Some(id) = &info.video_id {
        set(&mut r, VIDEO_ID, id);
        set(
            &mut r,
            VIDEO_STATE,
            info.video_state.as_deref().unwrap_or("uploaded"),
        );
        set(&mut r, "location", format!("/videos/{id}"));
    }
    r
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::NotFound(m) => ApiError::NotFound(m),
            UploadError::Conflict(m) => ApiError::Conflict(m),
            UploadError::Locked(m) => ApiError::Locked(m),
            UploadError::NotVideo(m) => ApiError::UnsupportedMedia(m),
            UploadError::ChecksumMismatch(m) => ApiError::ChecksumMismatch(m),
            UploadError::Storage(s) => ApiError::Storage(s),
            UploadError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

fn unwrap_call<T, M>(r: Result<CallResult<T>, ractor::MessagingErr<M>>) -> Result<T, ApiError> {
    match r {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(ApiError::Unavailable(
            "the upload did not answer in time".into(),
        )),
        Ok(CallResult::SenderError) | Err(_) => Err(ApiError::Unavailable(
            "the upload's actor stopped; retry".into(),
        )),
    }
}

/// Calls the actor of upload `id` (after the routing check) with `msg`, looking the upload up
/// again if its actor stopped in between ([`call_upload`]): a `HEAD` or `PATCH` right after a
/// `DELETE` answers `404`, never a `503`. Returns the actor that answered and its answer.
async fn upload_call<T: Send + 'static>(
    app: &App,
    id: &str,
    actor: Option<ActorRef<UploadMsg>>,
    msg: impl Fn(ractor::RpcReplyPort<T>) -> UploadMsg,
) -> Result<(ActorRef<UploadMsg>, T), ApiError> {
    if !keys::valid_upload_id(id) {
        return Err(ApiError::NotFound(format!("no upload {id:?}")));
    }
    Ok(call_upload(&app.node.refs.uploads, id, actor, msg, CALL_TIMEOUT).await?)
}

async fn create(app: App, headers: HeaderMap, body: Body) -> Result<Response<Bytes>, ApiError> {
    check_version(&headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::BadRequest(
            "Upload-Defer-Length is not supported: send Upload-Length".into(),
        ));
    }
    let length = parse_u64_header(&headers, "upload-length")?
        .ok_or_else(|| ApiError::BadRequest("Upload-Length is required".into()))?;
    let max = app.config.limits.max_upload_bytes;
    if length > max {
        return Err(ApiError::TooLarge(format!(
            "Upload-Length is {length} bytes; the limit is {max} bytes"
        )));
    }
    if length == 0 {
        return Err(ApiError::BadRequest(
            "Upload-Length is 0: an empty file is not a video".into(),
        ));
    }
    let raw_metadata = header(&headers, "upload-metadata")?.map(str::to_string);
    let metadata = match &raw_metadata {
        Some(m) => parse_metadata(m).map_err(ApiError::BadRequest)?,
        None => Vec::new(),
    };
    let text = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let filetype = text("filetype");
    if let Some(t) = filetype
        .as_deref()
        .filter(|t| t.starts_with("text/") || t.starts_with("image/"))
    {
        return Err(ApiError::UnsupportedMedia(format!(
            "filetype {t} is not a video: upload a video file such as MP4, MOV, MKV or WebM"
        )));
    }
    let sha256 =
        match text("sha256") {
            None => None,
            Some(s) => Some(parse_sha256(&s).ok_or_else(|| {
                ApiError::BadRequest("metadata sha256 must be 64 hex digits".into())
            })?),
        };
    let ctype = header(&headers, "content-type")?;
    let with_body = ctype == Some(OFFSET_OCTET_STREAM);
    if !with_body
        && ctype.is_some()
        && parse_u64_header(&headers, "content-length")?.unwrap_or(0) > 0
    {
        return Err(ApiError::UnsupportedMedia(format!(
            "a creation request with a body needs Content-Type: {OFFSET_OCTET_STREAM}"
        )));
    }
    let now = now_ms();
    let expiry_ms = (app.config.limits.upload_expiry_seconds as i64).saturating_mul(1000);
    let mut info = UploadInfo {
        id: keys::new_upload_id(&app.config.node_id),
        length,
        offset: 0,
        parts: Vec::new(),
        raw_metadata,
        filename: text("filename"),
        filetype,
        sha256: sha256.clone(),
        sniffed: false,
        created_ms: now,
        expires_ms: now + expiry_ms,
        video_id: None,
        video_state: None,
        duplicate: false,
    };
    // Dedupe before transfer: the upload is born complete.
    if let Some(d) = &sha256 {
        if let Some(a) = app.node.ctx.ingest().existing(d).await? {
            app.node.after_ingest(&a).await;
            info.offset = length;
            info.video_id = Some(a.video_id);
            info.video_state = Some(a.state);
            info.duplicate = true;
        }
    }
    let r = app
        .node
        .refs
        .uploads
        .call(
            |reply| UploadSupervisorMsg::Create {
                info: Box::new(info.clone()),
                reply,
            },
            Some(Duration::from_secs(30)),
        )
        .await;
    let actor = unwrap_call(r)??;
    let location = upload_location(
        app.config.public_url.as_deref(),
        app.config.listen,
        header(&headers, "host")?,
        &info.id,
    );
    let info = if with_body && !info.is_complete() {
        append(&app, Some(actor), &info.id, 0, &headers, body).await?
    } else {
        info
    };
    let mut r = with_state(empty(StatusCode::CREATED), &info);
    set(&mut r, "location", location);
    Ok(r)
}

async fn head(app: App, id: String, headers: HeaderMap) -> Result<Response<Bytes>, ApiError> {
    check_version(&headers)?;
    let (_, info) = upload_call(&app, &id, None, UploadMsg::Info).await?;
    let mut r = with_state(empty(StatusCode::OK), &info);
    set(&mut r, "upload-length", info.length);
    set(&mut r, "cache-control", "no-store");
    if let Some(m) = &info.raw_metadata {
        set(&mut r, "upload-metadata", m);
    }
    Ok(r)
}

async fn patch(
    app: App,
    id: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response<Bytes>, ApiError> {
    check_version(&headers)?;
    if header(&headers, "content-type")? != Some(OFFSET_OCTET_STREAM) {
        return Err(ApiError::UnsupportedMedia(format!(
            "PATCH needs Content-Type: {OFFSET_OCTET_STREAM}"
        )));
    }
    let offset = parse_u64_header(&headers, "upload-offset")?
        .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
    parse_checksum(&headers)?;
    let info = append(&app, None, &id, offset, &headers, body).await?;
    Ok(with_state(empty(StatusCode::NO_CONTENT), &info))
}

async fn terminate(app: App, id: String, headers: HeaderMap) -> Result<Response<Bytes>, ApiError> {
    check_version(&headers)?;
    upload_call(&app, &id, None, UploadMsg::Terminate)
        .await?
        .1?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Gives the lease back if the PATCH ends without `End` (a panic): the upload never stays
/// locked.
struct LeaseGuard {
    actor: ActorRef<UploadMsg>,
    token: u64,
    done: bool,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.actor.cast(UploadMsg::Release { token: self.token });
        }
    }
}

/// Append `body` at `offset`: take the lease, stream into a part, report. The streaming runs in
/// its own task so that it finishes (and records what arrived) even when the client vanishes
/// and this request's future is dropped: that is what makes the lost-final-response case work.
async fn append(
    app: &App,
    actor: Option<ActorRef<UploadMsg>>,
    id: &str,
    offset: u64,
    headers: &HeaderMap,
    body: Body,
) -> Result<UploadInfo, ApiError> {
    let checksum = parse_checksum(headers)?;
    let (actor, begun) =
        upload_call(app, id, actor, |reply| UploadMsg::Begin { offset, reply }).await?;
    let begun = begun?;
    let lease = match begun {
        Begun::Complete(info) => return Ok(info),
        Begun::Lease(l) => l,
    };
    let guard = LeaseGuard {
        actor: actor.clone(),
        token: lease.token,
        done: false,
    };
    if let Some(n) = parse_u64_header(headers, "content-length")? {
        if offset.saturating_add(n) > lease.info.length {
            return Err(ApiError::BadRequest(format!(
                "{n} bytes at offset {offset} go past Upload-Length {}",
                lease.info.length
            )));
        }
    }
    let ctx = app.node.ctx.clone();
    let id = id.to_string();
    let idle = app.config.limits.body_idle();
    let task = tokio::spawn(async move {
        let mut guard = guard;
        let (outcome, error) = receive(&ctx.storage, &id, &lease, body, checksum, idle).await;
        guard.done = true;
        let token = lease.token;
        let ended = unwrap_call(
            guard
                .actor
                .call(
                    |reply| UploadMsg::End {
                        token,
                        outcome,
                        reply,
                    },
                    Some(CALL_TIMEOUT),
                )
                .await,
        )?;
        let info = ended?;
        match error {
            Some(e) => Err(e),
            None => Ok(info),
        }
    });
    task.await
        .map_err(|e| ApiError::Unavailable(format!("the PATCH failed: {e}")))?
}

/// The first `SNIFF_BYTES` already stored (the parts before `lease.info.offset`).
async fn stored_head(
    storage: &crate::storage::Storage,
    info: &UploadInfo,
) -> Result<Vec<u8>, ApiError> {
    let mut head = Vec::new();
    for p in &info.parts {
        if head.len() >= SNIFF_BYTES {
            break;
        }
        let n = p.len.min((SNIFF_BYTES - head.len()) as u64);
        let b = storage.get_range(&p.key(&info.id), 0, n).await?;
        head.extend_from_slice(&b);
    }
    Ok(head)
}

/// Stream `body` into the part at the lease's offset. Returns what to report to the actor and,
/// separately, the error to answer with (a part may be kept and still the answer is an error,
/// e.g. an interrupted body). A body that delivers nothing for `idle` counts as cut: what
/// arrived is kept and the lease ends with it.
async fn receive(
    storage: &crate::storage::Storage,
    id: &str,
    lease: &Lease,
    mut body: Body,
    checksum: Option<Checksum>,
    idle: std::time::Duration,
) -> (PatchOutcome, Option<ApiError>) {
    let info = &lease.info;
    let start = info.offset;
    let remaining = info.length - start;
    let key = keys::upload_part_of(id, start, Some(&lease.writer));
    let mut head = Head::default();
    let mut sniffed = info.sniffed;
    if !sniffed && start > 0 {
        match stored_head(storage, info).await {
            Ok(h) => head = Head::starting_with(h),
            Err(e) => return (PatchOutcome::Nothing, Some(e)),
        }
    }
    let mut hasher = checksum.as_ref().map(ChunkHasher::new);
    // The upload's running SHA-256 (so completion need not read the parts again).
    let mut whole = lease.hasher.clone();
    let mut pending: Vec<Bytes> = Vec::new();
    let mut writer = None;
    let mut received: u64 = 0;
    let mut failure: Option<ApiError> = None;
    let mut cut = false;
    let mut stalled = false;
    macro_rules! write_out {
        ($chunk:expr) => {{
            if writer.is_none() {
                match storage.writer(&key).await {
                    Ok(w) => writer = Some(w),
                    Err(e) => {
                        failure = Some(e.into());
                        break;
                    }
                }
            }
            let w = writer.as_mut().expect("writer was just created");
            if let Err(e) = w.put($chunk).await {
                failure = Some(e.into());
                break;
            }
        }};
    }
    loop {
        let chunk = match next_chunk(writer.as_mut(), &mut body, idle).await {
            Err(e) => {
                failure = Some(e.into());
                break;
            }
            Ok(BodyNext::Quiet) => {
                cut = true;
                stalled = true;
                break;
            }
            Ok(BodyNext::End) => break,
            Ok(BodyNext::Broken(_)) => {
                cut = true;
                break;
            }
            Ok(BodyNext::Chunk(c)) => c,
        };
        if chunk.is_empty() {
            continue;
        }
        if received + chunk.len() as u64 > remaining {
            failure = Some(ApiError::BadRequest(format!(
                "the body goes past Upload-Length {}; the chunk was discarded",
                info.length
            )));
            break;
        }
        received += chunk.len() as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = whole.as_mut() {
            sha2::Digest::update(h, &chunk);
        }
        if sniffed {
            write_out!(chunk);
            continue;
        }
        let verdict = head.feed(&chunk, start + received == info.length);
        pending.push(chunk);
        match verdict {
            Sniff::NotVideo(reason) => {
                if let Some(w) = writer.take() {
                    let _ = w.abort().await;
                }
                return (
                    PatchOutcome::NotVideo(reason.clone()),
                    Some(ApiError::UnsupportedMedia(format!(
                        "{reason}; the upload was terminated"
                    ))),
                );
            }
            Sniff::NeedMore => {}
            Sniff::Container(_) | Sniff::Unknown => {
                sniffed = true;
                for c in std::mem::take(&mut pending) {
                    write_out!(c);
                }
            }
        }
    }
    // The body ended before the head could be judged: judge what there is, or keep it and
    // judge at the next PATCH.
    if failure.is_none() && !sniffed && !cut {
        if let Sniff::NotVideo(reason) = head.judge(start + received == info.length) {
            if let Some(w) = writer.take() {
                let _ = w.abort().await;
            }
            return (
                PatchOutcome::NotVideo(reason.clone()),
                Some(ApiError::UnsupportedMedia(format!(
                    "{reason}; the upload was terminated"
                ))),
            );
        }
    }
    let checksum_failed = match (&checksum, hasher) {
        (Some(c), Some(h)) if !cut && failure.is_none() => !h.matches(c),
        _ => false,
    };
    // A chunk with a checksum is all or nothing; a chunk past the length is discarded.
    let discard = failure.is_some() || checksum_failed || (cut && checksum.is_some());
    if !discard {
        for c in std::mem::take(&mut pending) {
            if writer.is_none() {
                match storage.writer(&key).await {
                    Ok(w) => writer = Some(w),
                    Err(e) => return (PatchOutcome::Nothing, Some(e.into())),
                }
            }
            if let Some(w) = writer.as_mut() {
                if let Err(e) = w.put(c).await {
                    return (PatchOutcome::Nothing, Some(e.into()));
                }
            }
        }
    }
    if discard {
        if let Some(w) = writer.take() {
            let _ = w.abort().await;
        }
        let e = if checksum_failed {
            ApiError::ChecksumMismatch(
                "the chunk does not match Upload-Checksum; it was discarded: resend it".into(),
            )
        } else {
            failure.unwrap_or_else(|| {
                ApiError::BadRequest("the body was interrupted; the chunk was discarded".into())
            })
        };
        return (PatchOutcome::Nothing, Some(e));
    }
    if received > 0 {
        if let Some(w) = writer.take() {
            if let Err(e) = w.finish().await {
                return (PatchOutcome::Nothing, Some(e.into()));
            }
        }
    }
    let outcome = PatchOutcome::Stored {
        part: Part {
            offset: start,
            len: received,
            writer: Some(lease.writer.clone()),
        },
        sniffed,
        hasher: whole,
    };
    let error = cut.then(|| {
        let resume = start + received;
        if stalled {
            ApiError::RequestTimeout(format!(
                "no bytes arrived for {} s; the {received} bytes received were kept: resume at offset {resume}",
                idle.as_secs()
            ))
        } else {
            ApiError::BadRequest(format!(
                "the body was interrupted after {received} bytes; they were kept: resume at offset {resume}"
            ))
        }
    });
    (outcome, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_parses_tus_pairs() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .unwrap();
        assert_eq!(m[0].0, "filename");
        assert_eq!(m[0].1, b"world_domination_plan.pdf");
        assert_eq!(m[1], ("is_confidential".to_string(), Vec::new()));
        assert!(parse_metadata("a !!!").is_err());
        assert!(parse_metadata("a YQ==,a Yg==").is_err());
        assert!(parse_metadata("a YQ== extra").is_err());
        let many: Vec<String> = (0..33).map(|i| format!("k{i} YQ==")).collect();
        let e = parse_metadata(&many.join(",")).unwrap_err();
        assert!(e.contains("32 keys"), "{e}");
        let big = format!("filename {}", "QUFB".repeat(1100));
        let e = parse_metadata(&big).unwrap_err();
        assert!(e.contains("4096"), "{e}");
        assert_eq!(parse_metadata(&many[..32].join(",")).unwrap().len(), 32);
    }

    #[test]
    fn a_location_never_echoes_a_foreign_host() {
        let listen: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let at = |public, host| upload_location(public, listen, host, "n.1");
        assert_eq!(
            at(None, Some("127.0.0.1:8080")),
            "http://127.0.0.1:8080/files/n.1"
        );
        assert_eq!(at(None, Some("evil.example")), "/files/n.1");
        assert_eq!(at(None, None), "/files/n.1");
        assert_eq!(
            at(Some("https://videos.example.com"), Some("evil.example")),
            "https://videos.example.com/files/n.1"
        );
    }

    #[test]
    fn http_dates_are_rfc_9110() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
