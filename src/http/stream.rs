//! Streaming: the multivariant playlist, media playlists, init segments and segments of ready
//! videos (seed: "streaming is possible only after processing completes"), with playback
//! sessions (seed rule 7; see `docs/streaming.md`).
//!
//! | path | what |
//! |---|---|
//! | `/videos/{id}/master.m3u8` | starts a session; variant URIs rewritten to `s/{session}/...` |
//! | `/videos/{id}/s/{session}/{rendition}/{file}` | the session's requests, served through its `SessionHandle` (cache, read-ahead, log) |
//! | `/videos/{id}/{rendition}/{file}` | session-less access (tools, tests): through the cache, no log, no read-ahead |
//!
//! Content types follow RFC 8216 section 4 (`application/vnd.apple.mpegurl`) and CMAF
//! (`video/mp4` for init and media segments). Segments and init segments are immutable once a
//! video is ready: long `Cache-Control`, the store's `ETag` (`If-None-Match` gives `304`) and
//! single byte ranges (`206`, `416`; RFC 9110 section 14). Playlists get a short lifetime.
//! Every response allows any origin (CORS), so players on other origins (hls.js) can fetch.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::{Filter, Rejection};

use crate::actors::session::SessionHandle;
use crate::actors::session_supervisor::{OpenReason, OpenRefused, SessionSupervisorMsg};
use crate::http::proxy::{self, Raced};
use crate::http::range::{self, RangeAnswer};
use crate::http::videos::{checked_id, record};
use crate::http::{respond, ApiError, App};
use crate::model::VideoState;
use crate::storage::keys::{self, RenditionFile};
use crate::storage::Object;
use crate::streaming::playlist::rewrite_multivariant;
use crate::streaming::session::{route_session, SessionId, SessionRoute};
use crate::streaming::VideoInfo;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const PLAYLIST_CACHE: &str = "public, max-age=10";
/// The multivariant playlist creates a session: a shared cache must not hand one session's
/// playlist to another player.
const MULTIVARIANT_CACHE: &str = "private, no-store";
const SEGMENT_CACHE: &str = "public, max-age=31536000, immutable";
/// How long a request waits for the session supervisor to open its session.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Request headers that change the answer.
#[derive(Debug, Default, Clone)]
struct Conditions {
    range: Option<String>,
    if_none_match: Option<String>,
}

pub(super) fn routes(
    with_app: impl Filter<Extract = (App,), Error = Infallible> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone {
    let conditions = warp::header::optional::<String>("range")
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|range, if_none_match| Conditions {
            range,
            if_none_match,
        });
    // HEAD is answered like GET (hyper drops the body); OPTIONS is the CORS preflight.
    let get_or_head = || warp::get().or(warp::head()).unify();
    // Rejects other methods as "not found", not 405: an unknown GET path stays a 404.
    let preflight = warp::path("videos")
        .and(warp::path::tail())
        .and(warp::method())
        .and_then(|_, m: warp::http::Method| async move {
            if m == warp::http::Method::OPTIONS {
                Ok(preflight_response())
            } else {
                Err(warp::reject::not_found())
            }
        });
    let master = warp::path!("videos" / String / "master.m3u8")
        .and(get_or_head())
        .and(with_app.clone())
        .and_then(|id: String, app: App| async move { respond(multivariant(app, id).await) });
    let session_file =
        warp::path!("videos" / String / "s" / String / String / String)
            .and(get_or_head())
            .and(conditions)
            .and(with_app.clone())
            .and(warp::header::headers_cloned())
            .and_then(
                |id: String,
                 session: String,
                 rendition: String,
                 file: String,
                 c,
                 app: App,
                 headers| async move {
                    respond(session_file(app, &id, &session, &rendition, &file, c, headers).await)
                },
            );
    let file = warp::path!("videos" / String / String / String)
        .and(get_or_head())
        .and(conditions)
        .and(with_app)
        .and_then(
            |id: String, rendition: String, file: String, c, app: App| async move {
                respond(rendition_file(app, &id, &rendition, &file, c).await)
            },
        );
    master
        .or(session_file)
        .unify()
        .or(file)
        .unify()
        .or(preflight)
        .unify()
}

/// A segment-path request the node answers without warp's filter chain: the two routes that
/// carry almost all of a node's requests (a player fetches a segment every few seconds), where
/// warp's chain of filters (trying routes in turn, cloning the header map, the trace span) cost
/// about as much as the handler (issue 11, P1). Everything else, and every request this does not
/// take, goes through warp's routes ([`routes`]), which answer these paths identically
/// (tested in `tests/it/sessions.rs`).
///
/// `S` is `&str` while the request is looked at, `String` once it is taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FastRoute<S> {
    /// `/videos/{id}/s/{session}/{rendition}/{file}`
    Session {
        id: S,
        session: S,
        rendition: S,
        file: S,
    },
    /// `/videos/{id}/{rendition}/{file}`
    File { id: S, rendition: S, file: S },
}

impl<S> FastRoute<S> {
    /// The same route with each segment made by `f` from this one's.
    fn map<'a, T>(&'a self, f: impl Fn(&'a S) -> T) -> FastRoute<T> {
        match self {
            FastRoute::Session {
                id,
                session,
                rendition,
                file,
            } => FastRoute::Session {
                id: f(id),
                session: f(session),
                rendition: f(rendition),
                file: f(file),
            },
            FastRoute::File {
                id,
                rendition,
                file,
            } => FastRoute::File {
                id: f(id),
                rendition: f(rendition),
                file: f(file),
            },
        }
    }
}

impl FastRoute<String> {
    /// The same route, borrowing its segments.
    fn borrowed(&self) -> FastRoute<&str> {
        self.map(String::as_str)
    }
}

impl<S: AsRef<str>> FastRoute<S> {
    /// Whether the route names a session whose id names another home node than `node_id`.
    /// Only the id's home part is looked at, not parsed: the handler parses and checks the
    /// id (a malformed one gets `404` and is never forwarded).
    fn homed_elsewhere(&self, node_id: &str) -> bool {
        match self {
            FastRoute::Session { session, .. } => {
                // `rsplit_once('-')`'s home part, by a loop over the bytes: `memrchr`'s setup
                // cost more than the search of a short id (issue 11, P1).
                let session = session.as_ref();
                session
                    .bytes()
                    .rposition(|b| b == b'-')
                    .is_some_and(|at| session[..at] != *node_id)
            }
            FastRoute::File { .. } => false,
        }
    }
}

impl FastRoute<&str> {
    /// The same route, owning its segments (the request's handler outlives the borrow).
    pub(super) fn owned(self) -> FastRoute<String> {
        self.map(|s| s.to_string())
    }
}

/// The [`FastRoute`] of a request, or `None` for warp to route it. Taken only where warp's
/// routes would give the same answer: `GET` or `HEAD`; the path exactly `/videos/` and the
/// route's segments, none empty, no trailing slash (segments are used as warp's `path!`
/// uses them, undecoded); no `Reel-Forwarded-By` (warp's routes check its signature first);
/// `Range` and `If-None-Match`, when sent, readable as text (warp answers `400` otherwise).
pub(super) fn fast_route<'a>(
    method: &warp::http::Method,
    path: &'a str,
    headers: &warp::http::HeaderMap,
) -> Option<FastRoute<&'a str>> {
    if method != warp::http::Method::GET && method != warp::http::Method::HEAD {
        return None;
    }
    let (segments, n) = path_segments(path)?;
    route_of(segments, n, |name| {
        headers.get(name).map(HeaderValue::as_bytes)
    })
}

/// The segments of `path` after `/videos/`: `n` of them (at most five), each non-empty, no
/// trailing slash; `None` otherwise.
fn path_segments(path: &str) -> Option<([&str; 5], usize)> {
    let rest = path.strip_prefix("/videos/")?;
    let mut seg = [""; 5];
    let mut n = 0;
    for s in rest.split('/') {
        if s.is_empty() || n == seg.len() {
            return None;
        }
        seg[n] = s;
        n += 1;
    }
    Some((seg, n))
}

/// Whether `b` is an RFC 3986 unreserved character (section 2.3).
const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What [`target_segments`] makes of a byte of a target's path.
#[derive(Clone, Copy)]
enum PathByte {
    /// Unreserved: part of a segment.
    Plain,
    /// `/`: ends a segment.
    Slash,
    /// `?`: ends the path.
    Query,
    /// Anything else: the front does not take the target.
    Other,
}

/// Bytes [`target_segments`] checks together for a run of plain ones.
const PLAIN_RUN: usize = 8;

/// [`PathByte`] of each byte: one load instead of the comparisons of [`unreserved`], which
/// took a dozen instructions for each letter of every target (issue 11, P1).
static PATH_BYTES: [PathByte; 256] = {
    let mut classes = [PathByte::Other; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        classes[b] = if unreserved(c) {
            PathByte::Plain
        } else if c == b'/' {
            PathByte::Slash
        } else if c == b'?' {
            PathByte::Query
        } else {
            PathByte::Other
        };
        b += 1;
    }
    classes
};

/// What the connection's front takes of request target `target`: [`path_segments`] of its
/// path (up to the first `?`), when the path holds only unreserved characters and `/`, and the
/// query (after the `?`) only unreserved characters and `%`, `=`, `&`, `+`: targets every URI
/// parser takes as they are; what hyper would refuse (`400`) is hyper's to answer. The same
/// segments as `path_segments` of the path `Uri::path` gives (a test holds them equal), found
/// in the one pass over the path's bytes that checks them: searching for `?` and each `/`
/// cost more than the check (issue 11, P1).
fn target_segments(target: &str) -> Option<([&str; 5], usize)> {
    let rest = target.strip_prefix("/videos/")?;
    let bytes = rest.as_bytes();
    let mut seg = [""; 5];
    let mut n = 0;
    let mut start = 0;
    let mut end = bytes.len();
    let plain = |b: &u8| matches!(PATH_BYTES[usize::from(*b)], PathByte::Plain);
    // Eight bytes at a time: a run of plain ones (most of an id) costs one branch, not eight;
    // a run holding anything else is taken byte by byte.
    'scan: for (c, chunk) in bytes.chunks(PLAIN_RUN).enumerate() {
        if chunk.len() == PLAIN_RUN && chunk.iter().fold(true, |ok, b| ok & plain(b)) {
            continue;
        }
        for (j, &b) in chunk.iter().enumerate() {
            let i = c * PLAIN_RUN + j;
            match PATH_BYTES[usize::from(b)] {
                PathByte::Plain => {}
                PathByte::Slash => {
                    if i == start || n == seg.len() - 1 {
                        return None;
                    }
                    seg[n] = &rest[start..i];
                    n += 1;
                    start = i + 1;
                }
                PathByte::Query => {
                    end = i;
                    break 'scan;
                }
                PathByte::Other => return None,
            }
        }
    }
    if end == start {
        return None;
    }
    seg[n] = &rest[start..end];
    let query = rest.get(end + 1..).unwrap_or("");
    // A fold, not `all`: the compiler checks many bytes at once.
    let plain_query = query.bytes().fold(true, |ok, b| {
        ok & (unreserved(b) | matches!(b, b'%' | b'=' | b'&' | b'+'))
    });
    plain_query.then_some((seg, n + 1))
}

/// The [`FastRoute`] of a `GET` or `HEAD` request whose path's `n` segments after `/videos/`
/// are `seg` ([`path_segments`]), its headers read through `header` (a header's value by its
/// lowercase name).
fn route_of<'a, 'h>(
    seg: [&'a str; 5],
    n: usize,
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Option<FastRoute<&'a str>> {
    // What `HeaderValue::to_str` accepts: visible ASCII, space and tab.
    let text = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b));
    if header(proxy::FORWARDED_BY).is_some()
        || [header::RANGE.as_str(), header::IF_NONE_MATCH.as_str()]
            .iter()
            .any(|h| header(h).is_some_and(|v| !text(v)))
    {
        return None;
    }
    match (n, seg) {
        (5, [id, "s", session, rendition, file]) => Some(FastRoute::Session {
            id,
            session,
            rendition,
            file,
        }),
        (3, [id, rendition, file, _, _]) => Some(FastRoute::File {
            id,
            rendition,
            file,
        }),
        _ => None,
    }
}

/// A [`FastRoute`] request taken apart before its handler runs, owning what the handler needs
/// and nothing that points into the request.
///
/// hyper reads on from the connection as soon as it has handed a request to its handler (to
/// see the next request or the client's close). A header value or path still pointing into
/// its read buffer then keeps that buffer shared, and hyper allocates a new 8 KiB buffer for
/// every request (`malloc` and `free` fell from about 5 % of a node's CPU to 2 % without it,
/// serving cached 200 kB segments; issue 11 P1). So
/// the route's segments and the conditions are copied out here and the request is dropped
/// before the handler starts; only a session request that may be forwarded to another node
/// keeps the request's headers (the forward carries them).
pub(super) struct FastRequest {
    method: warp::http::Method,
    route: FastRoute<String>,
    c: Conditions,
    /// The request's headers when the session is homed on another node; empty otherwise.
    headers: warp::http::HeaderMap,
}

impl FastRequest {
    /// The request's [`FastRoute`] and what its handler needs, or the request back for warp.
    /// `node_id` is this node's id (a session homed here is never forwarded).
    // The request goes back to warp by value: boxing it would allocate for every other request.
    #[allow(clippy::result_large_err)]
    pub(super) fn take<B>(
        req: warp::http::Request<B>,
        node_id: &str,
    ) -> Result<Self, warp::http::Request<B>> {
        let Some(route) = fast_route(req.method(), req.uri().path(), req.headers()) else {
            return Err(req);
        };
        let route = route.owned();
        let (parts, _body) = req.into_parts();
        let text = |h: header::HeaderName| {
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let c = Conditions {
            range: text(header::RANGE),
            if_none_match: text(header::IF_NONE_MATCH),
        };
        // Only whether to keep the headers (a forward carries them).
        let homed_elsewhere = route.homed_elsewhere(node_id);
        Ok(Self {
            method: parts.method,
            route,
            c,
            headers: if homed_elsewhere {
                parts.headers
            } else {
                warp::http::HeaderMap::new()
            },
        })
    }
}

/// A request read at the connection's front ([`crate::http::front`]) that a [`FastRoute`]
/// takes, borrowing its route from the request's head: a cache hit is answered without
/// allocating for it; anything else becomes a [`FastRequest`].
pub(super) struct FrontRequest<'a> {
    method: warp::http::Method,
    route: FastRoute<&'a str>,
    c: Conditions,
}

impl<'a> FrontRequest<'a> {
    /// The request of `head`, or `None` for hyper and warp to answer it: not one of the
    /// [`FastRoute`]s, or a session homed on another node (forwarded by warp's route, with
    /// the request's headers). `node_id` is this node's id.
    pub(super) fn of(head: &crate::http::front::Head<'a>, node_id: &str) -> Option<Self> {
        let (segments, n) = target_segments(head.target)?;
        let route = route_of(segments, n, |name| head.header(name))
            .filter(|r| !r.homed_elsewhere(node_id))?;
        // `route_of` checked that both are text.
        let text = |name: header::HeaderName| {
            head.header(name.as_str())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        Some(Self {
            method: if head.is_get() {
                warp::http::Method::GET
            } else {
                warp::http::Method::HEAD
            },
            route,
            c: Conditions {
                range: text(header::RANGE),
                if_none_match: text(header::IF_NONE_MATCH),
            },
        })
    }

    /// [`serve_hit`]'s answer to this request, `memo` its connection's.
    pub(super) fn serve_hit(&self, app: &App, memo: &mut Memo) -> Option<ObjectAnswer> {
        serve_hit_of(app, &self.method, &self.route, &self.c, memo)
    }

    /// The request, owning its route, for [`serve_fast`].
    pub(super) fn into_owned(self) -> FastRequest {
        FastRequest {
            method: self.method,
            route: self.route.owned(),
            c: self.c,
            headers: warp::http::HeaderMap::new(),
        }
    }
}

/// Answer a [`FastRequest`] with the handler warp's route calls; a client error is logged as
/// warp's trace logs it under the default filter (`request failed`, at `warn`).
pub(super) async fn serve_fast(app: App, req: FastRequest) -> Response<Bytes> {
    let FastRequest {
        method,
        route,
        c,
        headers,
    } = req;
    let r = match &route {
        FastRoute::Session {
            id,
            session,
            rendition,
            file,
        } => session_file(app, id, session, rendition, file, c, headers).await,
        FastRoute::File {
            id,
            rendition,
            file,
        } => rendition_file(app, id, rendition, file, c).await,
    };
    let r = match respond(r) {
        Ok(r) => r,
        Err(never) => match never {},
    };
    logged(&method, &route, r)
}

/// Answer a [`FastRequest`] from the node's cache without waiting, when it is the common case
/// of a playing session: the video is known here, the session is homed and open on this node,
/// and the object is cached (or a session-less request of a cached object). `None` for
/// everything else, with nothing counted or logged: [`serve_fast`] then answers it (a miss, an
/// error, a session to open, forward or take over).
///
/// The answer is the one `serve_fast` gives (the same handle's counters, `SERVE` record and
/// read-ahead, the same [`object_response`]), but a request answered here needs no future of
/// its own: `serve_fast`'s is over 1 KiB, which glibc's allocator serves from its large bins,
/// consolidating its free lists first (about 5 % of a node's user CPU serving cached 200 kB
/// segments at 1,024 connections; issue 11, P1).
pub(super) fn serve_hit(app: &App, req: &FastRequest) -> Option<Response<Bytes>> {
    let route = req.route.borrowed();
    if route.homed_elsewhere(&app.node.ctx.node_id) {
        return None;
    }
    let memo = &mut Memo::default();
    serve_hit_of(app, &req.method, &route, &req.c, memo).map(ObjectAnswer::into_response)
}

/// What a connection's front keeps between its requests (its
/// [`Front::Memo`](crate::http::front::Front::Memo)): the open session its last session
/// request named, and the ready video its last session-less request named. A player's next
/// request names the same ones, and finds them here instead of in the node's session table
/// and video map: those are shared by every connection of both connection threads, and a
/// lookup there (a lock taken and released, a reference count raised and lowered) moved their
/// cache lines between the cores on every request (issue 11, P1).
///
/// A session kept here is used only while it is open ([`SessionHandle::is_open`]): one that
/// stopped is looked up again (and opened again by the slow path if it is gone), as without
/// the memo; a lookup that finds nothing empties the memo, so a connection holds at most the
/// one session it asked for last. A video's renditions never change once it is ready, so a
/// kept video is always right.
#[derive(Default)]
pub(super) struct Memo {
    session: Option<std::sync::Arc<SessionHandle>>,
    video: Option<std::sync::Arc<VideoInfo>>,
}

impl Memo {
    /// The open session `id` of this node: the kept one, or else the table's (then kept).
    fn session(&mut self, app: &App, id: &str) -> Option<&std::sync::Arc<SessionHandle>> {
        let kept = self
            .session
            .as_ref()
            .is_some_and(|h| h.session_id() == id && h.is_open());
        if !kept {
            self.session = app.node.refs.session_table.get(id);
        }
        self.session.as_ref()
    }

    /// The ready video `id`, if this node knows it: the kept one, or else the node's (then
    /// kept).
    fn video(&mut self, app: &App, id: &str) -> Option<&VideoInfo> {
        if self.video.as_ref().is_none_or(|v| v.video_id != id) {
            self.video = app.node.ctx.streaming.video(id);
        }
        self.video.as_deref()
    }
}

/// [`serve_hit`] of a request's parts, its route borrowed (a request read at the connection's
/// front allocates nothing for a hit), `memo` its connection's. A session in `route` is homed
/// on this node: both callers have checked ([`FrontRequest::of`] takes no other, and
/// [`serve_hit`] looks), so a hit at the front searches the session id once.
fn serve_hit_of(
    app: &App,
    method: &warp::http::Method,
    route: &FastRoute<&str>,
    c: &Conditions,
    memo: &mut Memo,
) -> Option<ObjectAnswer> {
    let (id, rendition, file) = match route {
        FastRoute::Session {
            id,
            rendition,
            file,
            ..
        }
        | FastRoute::File {
            id,
            rendition,
            file,
        } => (id, rendition, file),
    };
    checked_id(id).ok()?;
    let kind =
        keys::parse_rendition_file(file).filter(|_| keys::valid_rendition_name(rendition))?;
    let ctx = &app.node.ctx;
    let object = match route {
        FastRoute::Session { session, .. } => {
            // Homed here (checked by the caller): served here whatever the ring says
            // (`route_session`), and the table lists only well-formed ids of open sessions.
            // The session checks the video and rendition against its own (a session exists
            // only for a ready video).
            let handle = memo.session(app, session)?;
            handle.serve_cached(id, rendition, kind)?.object
        }
        FastRoute::File { .. } => {
            let info = memo.video(app, id)?.renditions.get(*rendition)?;
            ctx.streaming
                .cache
                .get_cached(&keys::rendition_file_key(id, &info.dir, kind))?
        }
    };
    let r = object_answer(object, kind, c);
    log_client_error(method, route, r.status);
    Some(r)
}

/// Log a client error as warp's trace logs one under the default filter (`request failed`, at
/// `warn`), and pass the answer on.
fn logged<S: std::fmt::Display>(
    method: &warp::http::Method,
    route: &FastRoute<S>,
    r: Response<Bytes>,
) -> Response<Bytes> {
    log_client_error(method, route, r.status());
    r
}

/// [`logged`]'s log line, for an answer of `status`.
fn log_client_error<S: std::fmt::Display>(
    method: &warp::http::Method,
    route: &FastRoute<S>,
    status: StatusCode,
) {
    if status.is_client_error() {
        tracing::warn!(%method, path = %route, status = status.as_u16(), "request failed");
    }
}

impl<S: std::fmt::Display> std::fmt::Display for FastRoute<S> {
    /// The request's path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FastRoute::Session {
                id,
                session,
                rendition,
                file,
            } => write!(f, "/videos/{id}/s/{session}/{rendition}/{file}"),
            FastRoute::File {
                id,
                rendition,
                file,
            } => write!(f, "/videos/{id}/{rendition}/{file}"),
        }
    }
}

/// `OPTIONS /videos/...`: the CORS preflight a cross-origin player sends before a request with
/// headers outside the safelist (a multi-range `Range`, `If-None-Match`).
fn preflight_response() -> Response<Bytes> {
    let mut r = base_response(Bytes::new(), "text/plain", "public, max-age=86400");
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range, If-None-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// The renditions of a ready video; `409` with its state otherwise, `404` when unknown.
async fn ready_video(app: &App, id: &str) -> Result<std::sync::Arc<VideoInfo>, ApiError> {
    checked_id(id)?;
    let streaming = &app.node.ctx.streaming;
    if let Some(v) = streaming.video(id) {
        return Ok(v);
    }
    // Boxed: the record's read is the cold path, and its future would otherwise make every
    // segment request's future larger (see `serve_fast`).
    let r = Box::pin(record(app, id)).await?;
    match r.state {
        VideoState::Ready => {
            let info = VideoInfo::from_record(&r)
                .ok_or_else(|| ApiError::NotFound(format!("video {id} has no renditions")))?;
            Ok(streaming.remember_video(info))
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

/// Whether entity tag `tag`, as the store gave it, is already quoted (or weak): then it is
/// sent as it is, else in quotes.
fn is_quoted(tag: &str) -> bool {
    tag.starts_with('"') || tag.starts_with("W/")
}

/// Whether `token` (one entry of an `If-None-Match` list, trimmed) names entity tag `tag`
/// as the store gave it: the tag itself when already quoted or weak, else the tag in quotes.
fn names_tag(token: &str, tag: &str) -> bool {
    if token == "*" {
        return true;
    }
    if is_quoted(tag) {
        token == tag
    } else {
        token.len() == tag.len() + 2
            && token.starts_with('"')
            && token.ends_with('"')
            && &token[1..token.len() - 1] == tag
    }
}

/// Append entity tag `tag` as an `ETag` value (RFC 9110 section 8.8.3): as it is when
/// already quoted or weak, else in quotes.
fn push_quoted(out: &mut Vec<u8>, tag: &str) {
    if is_quoted(tag) {
        out.extend_from_slice(tag.as_bytes());
    } else {
        out.push(b'"');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'"');
    }
}

/// Whether `tag` can be a header value as it is: visible ASCII, space and tab, and bytes
/// above 127, as `HeaderValue` allows (a tag that cannot is left out of the answer).
fn header_safe(tag: &str) -> bool {
    tag.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

fn base_response(body: Bytes, content_type: &'static str, cache: &'static str) -> Response<Bytes> {
    let mut r = Response::new(body);
    // Room for the six headers of a whole segment's answer, allocated once: the map's smallest
    // table (six entries, about 600 bytes). Its next size, twelve entries, is over 1 KiB, which
    // glibc serves from its large bins after consolidating its free lists, about 2.5 % of a
    // node's user CPU (issue 11, P1); only a partial answer (`Content-Range`) grows to it.
    *r.headers_mut() = warp::http::HeaderMap::with_capacity(6);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static(ALLOW_ORIGIN),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    r
}

/// `Access-Control-Allow-Origin` of every answer: any origin (players on other origins).
const ALLOW_ORIGIN: &str = "*";
/// `Access-Control-Expose-Headers` of every answer: what a cross-origin player may read.
const EXPOSE_HEADERS: &str = "Content-Length, Content-Range, Accept-Ranges, ETag";

/// The answer to a request for a stored object (a segment, an init segment, a media
/// playlist): status `200`, `206` (one `Range`), `304` (`If-None-Match` names its tag) or
/// `416` (a range past its end), with the headers of every object answer: `Content-Type`,
/// `Cache-Control`, CORS, `Accept-Ranges: bytes`, its `ETag` when the store gave one, and a
/// `Content-Range` for `206` and `416` (RFC 9110 sections 8.8.3, 13.1.2, 14 and 15.3.7).
///
/// Made by [`object_answer`]; written by the connection's front straight into the head
/// ([`Written`](crate::http::front::Written)), or made a `Response` for hyper and warp
/// ([`ObjectAnswer::into_response`]): the same headers either way (a test holds them equal).
#[derive(Debug)]
pub struct ObjectAnswer {
    status: StatusCode,
    /// What the object is (its type and lifetime follow: [`type_and_cache`]).
    kind: RenditionFile,
    /// The store's entity tag, as it gave it (quoted here when not already).
    etag: Option<std::sync::Arc<str>>,
    /// `bytes {start}-{end}/{len}` for `206`, `bytes */{len}` for `416`.
    content_range: Option<(Option<(u64, u64)>, u64)>,
    body: Bytes,
}

impl ObjectAnswer {
    /// The answer as a `Response` (for hyper's connections and warp's routes).
    pub fn into_response(self) -> Response<Bytes> {
        let (content_type, cache) = type_and_cache(self.kind);
        let mut r = base_response(self.body, content_type, cache);
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        if let Some(range) = self.content_range {
            if let Ok(v) = HeaderValue::from_str(&content_range(range)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(tag) = self.etag.filter(|t| header_safe(t)) {
            let mut v = Vec::with_capacity(tag.len() + 2);
            push_quoted(&mut v, &tag);
            // Checked by `header_safe`: the tag's own bytes become the value.
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                h.insert(header::ETAG, v);
            }
        }
        r
    }
}

/// `Content-Range` of a part (`Some((start, end))`) or of an unsatisfiable range (`None`) of
/// an object of `len` bytes.
fn content_range((part, len): (Option<(u64, u64)>, u64)) -> String {
    match part {
        Some((start, end)) => format!("bytes {start}-{end}/{len}"),
        None => format!("bytes */{len}"),
    }
}

impl crate::http::front::Written for ObjectAnswer {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn write_headers(&self, head: &mut Vec<u8>) -> crate::http::front::WrittenHeaders {
        head.extend_from_slice(fixed_lines(self.kind).as_bytes());
        if let Some(range) = self.content_range {
            head.extend_from_slice(b"content-range: ");
            head.extend_from_slice(content_range(range).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"accept-ranges: bytes\r\n");
        if let Some(tag) = self.etag.as_deref().filter(|t| header_safe(t)) {
            head.extend_from_slice(b"etag: ");
            push_quoted(head, tag);
            head.extend_from_slice(b"\r\n");
        }
        crate::http::front::WrittenHeaders::default()
    }

    fn into_body(self) -> Bytes {
        self.body
    }
}

/// The answer for a whole stored object of `kind`, honouring `If-None-Match` and a single
/// `Range`.
fn object_answer(obj: Object, kind: RenditionFile, c: &Conditions) -> ObjectAnswer {
    let len = obj.bytes.len() as u64;
    let not_modified = match (&obj.e_tag, &c.if_none_match) {
        (Some(tag), Some(inm)) => inm.split(',').any(|t| names_tag(t.trim(), tag)),
        _ => false,
    };
    let (status, content_range, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, None, Bytes::new())
    } else {
        match range::answer(c.range.as_deref(), len) {
            RangeAnswer::Whole => (StatusCode::OK, None, obj.bytes),
            RangeAnswer::Unsatisfiable => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                Some((None, len)),
                Bytes::new(),
            ),
            RangeAnswer::Part { start, end } => (
                StatusCode::PARTIAL_CONTENT,
                Some((Some((start, end)), len)),
                obj.bytes.slice(start as usize..=end as usize),
            ),
        }
    };
    ObjectAnswer {
        status,
        kind,
        etag: obj.e_tag,
        content_range,
        body,
    }
}

/// [`object_answer`] as a `Response`.
fn object_response(obj: Object, kind: RenditionFile, c: &Conditions) -> Response<Bytes> {
    object_answer(obj, kind, c).into_response()
}

/// The header lines every object answer of `kind` starts with: its type and lifetime
/// ([`type_and_cache`]) and CORS, as [`base_response`] makes them; made once per kind, so
/// that the front copies them in one piece (a test holds them equal to the `Response`'s
/// headers).
fn fixed_lines(kind: RenditionFile) -> &'static str {
    fn lines(kind: RenditionFile) -> String {
        let (content_type, cache) = type_and_cache(kind);
        format!(
            "content-type: {content_type}\r\ncache-control: {cache}\r\n\
             access-control-allow-origin: {ALLOW_ORIGIN}\r\n\
             access-control-expose-headers: {EXPOSE_HEADERS}\r\n"
        )
    }
    static PLAYLIST: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| lines(RenditionFile::MediaPlaylist));
    static MEDIA: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| lines(RenditionFile::Init));
    match kind {
        RenditionFile::MediaPlaylist => &PLAYLIST,
        RenditionFile::Init | RenditionFile::Segment(_) => &MEDIA,
    }
}

fn type_and_cache(kind: RenditionFile) -> (&'static str, &'static str) {
    match kind {
        RenditionFile::MediaPlaylist => (PLAYLIST_TYPE, PLAYLIST_CACHE),
        RenditionFile::Init | RenditionFile::Segment(_) => ("video/mp4", SEGMENT_CACHE),
    }
}

/// `GET /videos/{id}/master.m3u8`: start a session on this node and answer the multivariant
/// playlist with its variant URIs under `s/{session}/`.
async fn multivariant(app: App, id: String) -> Result<Response<Bytes>, ApiError> {
    let video = ready_video(&app, &id).await?;
    let ctx = &app.node.ctx;
    let session = SessionId::new(&ctx.node_id);
    open_session(&app, &session, video, OpenReason::New).await?;
    let (obj, _) = ctx
        .streaming
        .cache
        .get(&ctx.storage, &keys::multivariant(&id))
        .await?;
    let obj =
        obj.ok_or_else(|| ApiError::NotFound(format!("video {id} has no multivariant playlist")))?;
    let body = rewrite_multivariant(&obj.bytes, &session.to_string()).map_err(|e| {
        ApiError::Storage(crate::storage::StorageError::Corrupt {
            key: keys::multivariant(&id),
            message: e,
        })
    })?;
    let mut r = base_response(Bytes::from(body), PLAYLIST_TYPE, MULTIVARIANT_CACHE);
    if let Ok(v) = HeaderValue::from_str(&session.to_string()) {
        r.headers_mut().insert("x-reel-session", v);
    }
    Ok(r)
}

async fn open_session(
    app: &App,
    session: &SessionId,
    video: std::sync::Arc<VideoInfo>,
    reason: OpenReason,
) -> Result<std::sync::Arc<SessionHandle>, ApiError> {
    let sessions = &app.node.refs.sessions;
    ractor::call_t!(
        sessions,
        |reply| SessionSupervisorMsg::Open {
            session: session.clone(),
            video,
            reason,
            reply,
        },
        SESSION_CALL_TIMEOUT.as_millis() as u64
    )
    .map_err(|e| ApiError::Unavailable(format!("session supervisor: {e}")))?
    .map_err(|refused| match refused {
        OpenRefused::NotHere(m) => ApiError::NotFound(m),
        OpenRefused::Full { max } => ApiError::Unavailable(format!(
            "this node plays {max} sessions already; retry shortly"
        )),
    })
}

/// `GET /videos/{id}/s/{session}/{rendition}/{file}`: a request of a session, served in this
/// task through the session's handle on the node [`route_session`] names (opened there first
/// if it does not run).
async fn session_file(
    app: App,
    id: &str,
    session: &str,
    rendition: &str,
    file: &str,
    c: Conditions,
    headers: warp::http::HeaderMap,
) -> Result<Response<Bytes>, ApiError> {
    let sid = SessionId::parse(session).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no session {session:?}: session ids look like {{node}}-{{16 hex digits}}; \
             start one with GET /videos/{{id}}/master.m3u8"
        ))
    })?;
    let kind = keys::parse_rendition_file(file)
        .filter(|_| keys::valid_rendition_name(rendition))
        .ok_or_else(|| ApiError::NotFound(format!("no file {rendition}/{file}")))?;
    let video = ready_video(&app, id).await?;
    if !video.renditions.contains_key(rendition) {
        return Err(ApiError::NotFound(format!(
            "video {id} has no rendition {rendition}"
        )));
    }
    let ctx = &app.node.ctx;
    // A request another node forwarded is served here: that node already routed it (so two
    // nodes that briefly disagree about the ring never bounce it).
    let route = if proxy::was_forwarded(&headers) {
        if sid.home() == ctx.node_id {
            SessionRoute::Local
        } else {
            SessionRoute::TakeOver {
                from: sid.home().to_string(),
            }
        }
    } else {
        route_session(&sid, &ctx.node_id, &*ctx.streaming.cluster())
    };
    let reason = match route {
        SessionRoute::Local => OpenReason::Resumed,
        SessionRoute::TakeOver { from } => OpenReason::TakeOver { from },
        SessionRoute::Remote { node } => {
            // Proxied, not redirected: the player stays on the node (or load balancer) it
            // chose, so when the session's node dies its next request still lands somewhere
            // alive, which takes the session over (seed rule 7).
            let path = format!("/videos/{id}/s/{sid}/{rendition}/{file}");
            match Box::pin(forward_session(&app, &sid, node, &path, &headers)).await {
                Forwarded::Answer(answer) => return answer,
                Forwarded::Here(reason) => reason,
            }
        }
    };
    let handle = match app.node.refs.session_table.get(session) {
        Some(h) => h,
        None => Box::pin(open_session(&app, &sid, video, reason)).await?,
    };
    let served = handle.serve(id, rendition, kind).await?;
    Ok(object_response(served.object, kind, &c))
}

/// What became of a session's request forwarded towards its node ([`forward_session`]).
enum Forwarded {
    /// The node's answer, or the error to answer with.
    Answer(Result<Response<Bytes>, ApiError>),
    /// This node's view dropped the node meanwhile, and the session is now this node's to
    /// serve (a takeover): open it here for this reason.
    Here(OpenReason),
}

/// Forward a session's request (a GET of a playlist or segment, safe to send again) to
/// `node`, the session's home or, when the home is dead, the node the ring gives it.
///
/// The request is not lost when that node dies or hangs while this node's view still holds
/// it live (issue 9's takeover, seed rule 7):
/// - the forward fails (no connection, or the answer breaks off): it waits up to
///   [`proxy::forward_retry_wait`] for the view to drop the node, and routes the request again
///   ([`route_session`]) if it does, or forwards it again if it does not;
/// - no answer comes (a hung node holds the connection open): the forward is dropped as soon
///   as the view drops the node (`fence_after` missed heartbeats), and the request routed
///   again;
/// - no answer comes and the node's `/health` does not answer either, while the view still
///   holds the node live (a wedged HTTP listener; [`proxy::forward`]'s bound): `504`, not
///   forwarded again.
///
/// Routing again names another node to forward to, or this node: then the session is taken
/// over here ([`Forwarded::Here`]). After [`proxy::MAX_FORWARDS`] failed forwards the last
/// failure is the answer (`503`). Whatever a takeover writes is fenced by the store as for any
/// takeover; this only decides where one request is answered.
async fn forward_session(
    app: &App,
    sid: &SessionId,
    mut node: String,
    path: &str,
    headers: &warp::http::HeaderMap,
) -> Forwarded {
    let ctx = &app.node.ctx;
    let mut changes = ctx.cluster.changes();
    let wait = proxy::forward_retry_wait(app.config.cluster.as_ref());
    let mut failure = None;
    for _ in 0..proxy::MAX_FORWARDS {
        let base = ctx.streaming.cluster().http_base(&node);
        let forward = proxy::forward(
            app,
            &node,
            base,
            warp::http::Method::GET,
            path,
            headers,
            proxy::empty_body(),
        );
        let live = || ctx.streaming.cluster().is_live(&node);
        match proxy::race_forward(&mut changes, live, wait, forward).await {
            Raced::Answer(answer) => return Forwarded::Answer(Ok(answer)),
            // A node that holds requests without a sign of life would hold the next too.
            Raced::Failed(e @ ApiError::GatewayTimeout(_)) => return Forwarded::Answer(Err(e)),
            Raced::Failed(e) => {
                failure = Some(e);
                continue;
            }
            Raced::Dropped(e) => failure = e.or(failure),
        }
        tracing::info!(
            session = %sid,
            from = %node,
            "a forwarded request's node left this node's view; routing the request again"
        );
        match route_session(sid, &ctx.node_id, &*ctx.streaming.cluster()) {
            SessionRoute::Remote { node: next } => node = next,
            SessionRoute::TakeOver { from } => {
                return Forwarded::Here(OpenReason::TakeOver { from })
            }
            SessionRoute::Local => return Forwarded::Here(OpenReason::Resumed),
        }
    }
    Forwarded::Answer(Err(failure.unwrap_or_else(|| {
        ApiError::Unavailable(format!(
            "session {sid}: the cluster changed {} times while its request was forwarded; retry",
            proxy::MAX_FORWARDS
        ))
    })))
}

/// `GET /videos/{id}/{rendition}/{file}` without a session: through the node's cache, with no
/// playback log and no read-ahead.
async fn rendition_file(
    app: App,
    id: &str,
    rendition: &str,
    file: &str,
    c: Conditions,
) -> Result<Response<Bytes>, ApiError> {
    let kind = keys::parse_rendition_file(file)
        .filter(|_| keys::valid_rendition_name(rendition))
        .ok_or_else(|| ApiError::NotFound(format!("no file {rendition}/{file}")))?;
    let video = ready_video(&app, id).await?;
    let dir = video
        .renditions
        .get(rendition)
        .map(|r| r.dir.clone())
        .ok_or_else(|| ApiError::NotFound(format!("video {id} has no rendition {rendition}")))?;
    let ctx = &app.node.ctx;
    let (obj, _) = ctx
        .streaming
        .cache
        .get(&ctx.storage, &keys::rendition_file(id, &dir, file))
        .await?;
    let obj =
        obj.ok_or_else(|| ApiError::NotFound(format!("video {id} has no {rendition}/{file}")))?;
    Ok(object_response(obj, kind, &c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::{HeaderMap, Method};

    fn route<'a>(
        method: Method,
        path: &'a str,
        headers: &[(&str, &[u8])],
    ) -> Option<FastRoute<&'a str>> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                warp::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        fast_route(&method, path, &h)
    }

    #[test]
    fn segment_paths_take_the_fast_route() {
        assert_eq!(
            route(Method::GET, "/videos/ab12/s/n1-00ff/720p/00003.m4s", &[]),
            Some(FastRoute::Session {
                id: "ab12",
                session: "n1-00ff",
                rendition: "720p",
                file: "00003.m4s",
            })
        );
        assert_eq!(
            route(
                Method::HEAD,
                "/videos/ab12/360p/index.m3u8",
                &[("range", b"bytes=0-9")]
            ),
            Some(FastRoute::File {
                id: "ab12",
                rendition: "360p",
                file: "index.m3u8",
            })
        );
        assert!(route(Method::GET, "/videos/ab12/360p/init.mp4", &[]).is_some());
    }

    #[test]
    fn a_taken_request_keeps_its_headers_only_when_it_may_be_forwarded() {
        let req = |path: &str| {
            warp::http::Request::get(path)
                .header("range", "bytes=0-9")
                .header("if-none-match", "\"e1\"")
                .header("user-agent", "hls.js")
                .body(())
                .unwrap()
        };
        // Homed here, and session-less: what the handler reads is copied out, the rest dropped.
        for path in [
            "/videos/ab12/s/n1-0123456789abcdef/720p/00003.m4s",
            "/videos/ab12/720p/00003.m4s",
        ] {
            let Ok(fast) = FastRequest::take(req(path), "n1") else {
                panic!("{path} takes the fast route");
            };
            assert_eq!(fast.c.range.as_deref(), Some("bytes=0-9"), "{path}");
            assert_eq!(fast.c.if_none_match.as_deref(), Some("\"e1\""), "{path}");
            assert!(fast.headers.is_empty(), "{path}");
            assert_eq!(fast.route.to_string(), path);
            assert_eq!(fast.method, Method::GET);
        }
        // Homed on another node: the forward carries the player's headers.
        let path = "/videos/ab12/s/n2-0123456789abcdef/720p/00003.m4s";
        let fast = FastRequest::take(req(path), "n1").ok().unwrap();
        assert_eq!(fast.headers.get("user-agent").unwrap(), "hls.js");
        assert_eq!(fast.headers.len(), 3);
        // Not a fast route: the request comes back whole for warp.
        let back = FastRequest::take(req("/videos/ab12/master.m3u8"), "n1")
            .err()
            .unwrap();
        assert_eq!(back.uri().path(), "/videos/ab12/master.m3u8");
        assert_eq!(back.headers().len(), 3);
    }

    #[test]
    fn everything_else_goes_through_warp() {
        let p = "/videos/ab12/s/n1-00ff/720p/00003.m4s";
        // Other methods: warp answers 405 or routes them (tus, uploads).
        assert_eq!(route(Method::POST, p, &[]), None);
        assert_eq!(route(Method::OPTIONS, p, &[]), None);
        // A forwarded request: warp's routes check its signature first.
        assert_eq!(
            route(Method::GET, p, &[(proxy::FORWARDED_BY, b"n2 1 sig")]),
            None
        );
        // A header warp would refuse with 400.
        assert_eq!(route(Method::GET, p, &[("range", b"bytes=\xff")]), None);
        assert_eq!(
            route(Method::GET, p, &[("if-none-match", b"\"\xfe\"")]),
            None
        );
        // Other shapes: warp's other routes, or its 404.
        for other in [
            "/videos/ab12/master.m3u8",
            "/videos/ab12/events",
            "/videos/ab12",
            "/videos/ab12/s/n1-00ff/720p",
            "/videos/ab12/x/n1-00ff/720p/00003.m4s",
            "/videos/ab12/s/n1-00ff/720p/00003.m4s/more",
            "/videos/ab12/s/n1-00ff/720p/00003.m4s/",
            "/videos/ab12//720p/00003.m4s",
            "/videos//360p/init.mp4",
            "/videosx/ab12/360p/init.mp4",
            "/health",
        ] {
            assert_eq!(route(Method::GET, other, &[]), None, "{other}");
        }
    }

    /// The front takes a target of unreserved characters and `/`, with a query of those and
    /// `%`, `=`, `&`, `+`, and routes its path without the query; anything else is hyper's.
    #[test]
    fn the_front_takes_only_plain_targets_and_routes_their_path() {
        let id = "0123456789abcdef0123456789abcdef";
        let taken = |target: &str| {
            let head = crate::http::front::Head::for_test("GET", target, &[]);
            FrontRequest::of(&head, "n1").map(|r| r.route.owned())
        };
        let file = |f: &str| FastRoute::File {
            id: id.to_string(),
            rendition: "720p".to_string(),
            file: f.to_string(),
        };
        let p = format!("/videos/{id}/720p/00001.m4s");
        assert_eq!(taken(&p), Some(file("00001.m4s")));
        assert_eq!(taken(&format!("{p}?a=1&b=%20+c")), Some(file("00001.m4s")));
        assert_eq!(taken(&format!("{p}?")), Some(file("00001.m4s")));
        for other in [
            format!("{p}?a=/"),
            format!("{p}?a?b"),
            format!("{p}#f"),
            format!("/videos/{id}/7%20p/00001.m4s"),
            format!("/videos/{id}/720p/0000\u{e9}.m4s"),
            format!("/videos/{id}/s/n2-00ff/720p/00001.m4s"),
        ] {
            assert_eq!(taken(&other), None, "{other}");
        }
        assert_eq!(
            taken(&format!("/videos/{id}/s/n1-00ff/720p/00001.m4s?x=1")),
            Some(FastRoute::Session {
                id: id.to_string(),
                session: "n1-00ff".to_string(),
                rendition: "720p".to_string(),
                file: "00001.m4s".to_string(),
            })
        );
    }

    /// The front's one pass over a target finds the segments the path's split does, and
    /// refuses exactly what the rule refuses: a path byte that is not unreserved or `/`, or a
    /// query byte that is not unreserved or `%`, `=`, `&`, `+`.
    #[test]
    fn the_fronts_one_pass_splits_and_checks_as_the_rule_says() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        /// The rule, written the plain way.
        fn rule(target: &str) -> Option<([&str; 5], usize)> {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let plain_path = path.bytes().all(|b| unreserved(b) || b == b'/');
            let plain_query = query
                .bytes()
                .all(|b| unreserved(b) || matches!(b, b'%' | b'=' | b'&' | b'+'));
            if plain_path && plain_query {
                path_segments(path)
            } else {
                None
            }
        }
        let mut runner = TestRunner::new(Config {
            cases: 4096,
            ..Config::default()
        });
        let target = (
            "(/videos/|/videos|/video/|/)",
            // Long enough for several runs of eight, plain and not, in the path and after.
            "([a-z0-9.~_-]{0,12}[a-z0-9s/?%=&+.~#\u{e9} -]{0,3}){0,5}",
        )
            .prop_map(|(prefix, rest)| format!("{prefix}{rest}"));
        runner
            .run(&target, |t| {
                prop_assert_eq!(target_segments(&t), rule(&t), "{}", t);
                Ok(())
            })
            .unwrap();
        // The edges, every time.
        for t in [
            "/videos/",
            "/videos/?",
            "/videos/a",
            "/videos/a/",
            "/videos//a",
            "/videos/a/b/c/d/e",
            "/videos/a/b/c/d/e/",
            "/videos/a/b/c/d/e/f",
            "/videos/a/b/c/d/e?x=1",
            "/videos/a?b/c",
            "/videos/a/b?",
            "/videos/a/b??",
        ] {
            assert_eq!(target_segments(t), rule(t), "{t}");
        }
    }

    /// The head the front writes for an object answer, parsed into a header map, equals the
    /// headers of the same answer made a `Response` (hyper's and warp's), for every status
    /// and every form of entity tag.
    #[test]
    fn an_object_answer_writes_the_headers_its_response_has() {
        use crate::http::front::Written;
        let tags = [
            None,
            Some("abc-123"),
            Some("\"quoted\""),
            Some("W/\"weak\""),
            Some("bad\r\nx-injected: 1"),
        ];
        let cases = [
            (None, None, StatusCode::OK),
            (Some("bytes=10-99"), None, StatusCode::PARTIAL_CONTENT),
            (
                Some("bytes=99999-"),
                None,
                StatusCode::RANGE_NOT_SATISFIABLE,
            ),
            (None, Some("\"abc-123\""), StatusCode::NOT_MODIFIED),
        ];
        let kinds = [
            RenditionFile::Segment(3),
            RenditionFile::Init,
            RenditionFile::MediaPlaylist,
        ];
        for (tag, kind) in tags.into_iter().flat_map(|t| kinds.map(|k| (t, k))) {
            for (range, inm, status) in cases {
                let obj = Object {
                    bytes: Bytes::from(vec![7u8; 1000]),
                    e_tag: tag.map(std::sync::Arc::from),
                };
                let c = Conditions {
                    range: range.map(str::to_string),
                    if_none_match: inm.map(str::to_string),
                };
                let answer = || object_answer(obj.clone(), kind, &c);
                let response = answer().into_response();
                let mut head = Vec::new();
                let written = answer().write_headers(&mut head);
                assert_eq!(written, crate::http::front::WrittenHeaders::default());
                let mut parsed = [httparse::EMPTY_HEADER; 16];
                let text = [head.as_slice(), b"\r\n"].concat();
                let Ok(httparse::Status::Complete(_)) = httparse::parse_headers(&text, &mut parsed)
                else {
                    panic!("a complete head: {}", String::from_utf8_lossy(&head));
                };
                let mut front = HeaderMap::new();
                for h in parsed.iter().take_while(|h| !h.name.is_empty()) {
                    let name = warp::http::HeaderName::from_bytes(h.name.as_bytes()).unwrap();
                    front.append(name, HeaderValue::from_bytes(h.value).unwrap());
                }
                let want_status = if tag == Some("abc-123") || status != StatusCode::NOT_MODIFIED {
                    status
                } else {
                    // Only the tag the request names is not modified.
                    StatusCode::OK
                };
                assert_eq!(answer().status(), want_status, "{tag:?} {range:?} {inm:?}");
                assert_eq!(response.status(), want_status);
                assert_eq!(&front, response.headers(), "{tag:?} {range:?} {inm:?}");
                assert_eq!(
                    answer().into_body(),
                    response.into_body(),
                    "{tag:?} {range:?} {inm:?}"
                );
            }
        }
    }

    #[test]
    fn if_none_match_names_a_tag_quoted_as_it_is_sent() {
        assert!(names_tag("\"abc\"", "abc"));
        assert!(names_tag("\"abc\"", "\"abc\""));
        assert!(names_tag("W/\"abc\"", "W/\"abc\""));
        assert!(names_tag("*", "abc"));
        assert!(!names_tag("abc", "abc"));
        assert!(!names_tag("\"abcd\"", "abc"));
        assert!(!names_tag("\"abc\"", "W/\"abc\""));
        assert!(!names_tag("\"", "abc"));
    }
}
