//! Forwarding a request to the node that owns its key (design brief section 4: byte requests
//! are redirected or proxied to the home node's HTTP address; no video bytes travel over the
//! cluster link).
//!
//! reel proxies rather than redirects: the client keeps talking to the node it chose (behind a
//! plain load balancer, a redirect would pin it to one node's address, and when that node died
//! the client would have nowhere to go). Bodies stream both ways without being buffered.
//!
//! A forwarded request carries `Reel-Forwarded-By: {node};t={unix ms};sig={hex}`, signed
//! ([`sign`]) with a key derived from the cluster secret. A node that receives a forwarded
//! request serves it itself even if its own ring view says otherwise: two nodes that briefly
//! disagree about the ring never bounce a request between them. Because that header makes a
//! node act on a request it does not own, it is checked before any route ([`check`]): a
//! client that sends it gets `400` (issue 10: a forged header let a client's PATCH replace
//! another node's bytes of the same upload, so a video id came to play someone else's clip).

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use warp::http::{HeaderMap, HeaderName, Method, Response, StatusCode};

use crate::http::{ApiError, App};

/// The header that marks a forwarded request; its value is the forwarding node's id.
pub const FORWARDED_BY: &str = "reel-forwarded-by";

/// Hop-by-hop headers (RFC 9110 section 7.6.1) that a proxy must not forward.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether this request was already forwarded by another node. Only meaningful after
/// [`check`] let the request through (the `routes` filter does that first).
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_BY)
}

/// How far a forwarded request's timestamp may be from this node's clock, milliseconds: nodes
/// of a cluster are expected to keep their clocks within this of each other (NTP).
pub const FORWARD_SKEW_MS: i64 = 30_000;

/// The forwarding key: SHA-256 of a fixed label and the cluster secret, so the secret itself
/// never signs anything.
fn forward_key(cookie: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"reel forwarding v1\n");
    h.update(cookie.as_bytes());
    h.finalize().into()
}

/// What a signature covers: who forwards, the method, the path with its query, the tus
/// `Upload-Offset` (so a signed PATCH cannot be replayed at another offset) and the time.
fn signed_text(node: &str, method: &Method, path_and_query: &str, offset: &str, t: i64) -> String {
    format!("{node}\n{method}\n{path_and_query}\n{offset}\n{t}")
}

fn mac(cookie: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    Hmac::<Sha256>::new_from_slice(&forward_key(cookie)).expect("HMAC accepts any key length")
}

/// The `Reel-Forwarded-By` value for a request `node` forwards now (HMAC-SHA256, RFC 2104).
pub fn sign(
    cookie: &str,
    node: &str,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    now_ms: i64,
) -> String {
    let offset = upload_offset(headers);
    let mut m = mac(cookie);
    m.update(signed_text(node, method, path_and_query, offset, now_ms).as_bytes());
    let sig = hex::encode(m.finalize().into_bytes());
    format!("{node};t={now_ms};sig={sig}")
}

fn upload_offset(headers: &HeaderMap) -> &str {
    headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Let a request through unless it carries a `Reel-Forwarded-By` that no peer signed: the
/// value must name another node than `me`, be signed with the cluster's key over this
/// request, and be no older or newer than [`FORWARD_SKEW_MS`]. `cookie` (the forwarding
/// secret) is `None` on a stand-alone node, where every such header is refused.
///
/// Errors: [`ApiError::BadRequest`] naming the header, never saying which check failed.
pub fn check(
    cookie: Option<&str>,
    me: &str,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<(), ApiError> {
    let Some(value) = headers.get(FORWARDED_BY) else {
        return Ok(());
    };
    let refused = || {
        ApiError::BadRequest(
            "Reel-Forwarded-By is set by reel nodes only; send the request without it".into(),
        )
    };
    let value = value.to_str().map_err(|_| refused())?;
    let mut parts = value.split(';');
    let node = parts.next().unwrap_or("");
    let t = parts
        .next()
        .and_then(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse::<i64>().ok());
    let sig = parts
        .next()
        .and_then(|p| p.strip_prefix("sig="))
        .and_then(|s| hex::decode(s).ok());
    let (Some(cookie), Some(t), Some(sig)) = (cookie, t, sig) else {
        return Err(refused());
    };
    if parts.next().is_some()
        || node.is_empty()
        || node == me
        || (now_ms - t).abs() > FORWARD_SKEW_MS
    {
        return Err(refused());
    }
    let mut m = mac(cookie);
    m.update(signed_text(node, method, path_and_query, upload_offset(headers), t).as_bytes());
    m.verify_slice(&sig).map_err(|_| refused())
}

/// Where a request should be served: `None` here, `Some(node)` forwarded to `node`.
///
/// `home` is the key's home on this node's ring. Forwarded requests are always served here.
pub fn target(app: &App, headers: &HeaderMap, home: &str) -> Option<String> {
    let me = app.node.ctx.cluster.self_id();
    (home != me && !was_forwarded(headers) && app.node.ctx.cluster.http_of(home).is_some())
        .then(|| home.to_string())
}

/// The request's path with its query string (`/files/x?a=b`): what a forwarded request is
/// sent to and signed over.
pub fn path_and_query(
) -> impl warp::Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    use warp::Filter;
    warp::path::full()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(|full: warp::path::FullPath, query: String| {
            if query.is_empty() {
                full.as_str().to_string()
            } else {
                format!("{}?{query}", full.as_str())
            }
        })
}

/// The HTTP base (`http://host:port`) of `node` in this node's cluster view.
pub fn base_of(app: &App, node: &str) -> Option<String> {
    app.node
        .ctx
        .cluster
        .http_of(node)
        .map(|a| format!("http://{a}"))
}

/// Forward a request to `node`, reachable at `base` (`http://host:port`), and send its answer
/// back.
///
/// `path_and_query` is the request's path with its query string. Errors: the node cannot be
/// reached, or its answer breaks off (`503`, so a client may retry; by then the ring may have
/// moved the key); the node holds the request without a sign of life (`504`, below).
///
/// A node can answer its peers' heartbeats and still not answer HTTP (a wedged listener): the
/// cluster view keeps it live, so [`race_forward`] alone would wait for as long as the client
/// does, and a retrying player would pile up forwards. So a forward that makes no progress
/// (no byte of the request body taken, no byte of the answer) for `limits.body_idle_seconds`
/// (default 30 s, the bound an upload body may be silent) asks the node's `/health`, within
/// the same bound: a node that answers it is working (joining a large upload's parts can take
/// minutes) and is waited for again; one that does not gets the request answered `504`, as
/// nginx's `proxy_read_timeout` does. The bound is the request's only: which node owns what
/// is still decided by the store.
pub async fn forward<S>(
    app: &App,
    node: &str,
    base: Option<String>,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: S,
) -> Result<Response<Bytes>, ApiError>
where
    S: Stream<Item = Result<Bytes, warp::Error>> + Send + 'static,
{
    let base =
        base.ok_or_else(|| ApiError::Unavailable(format!("node {node} has no known address")))?;
    let url = format!("{base}{path_and_query}");
    let secret = app.config.forward_secret.as_ref().map(|s| s.expose());
    let signed = sign(
        secret.unwrap_or(""),
        app.node.ctx.cluster.self_id(),
        &method,
        path_and_query,
        headers,
        crate::model::now_ms(),
    );
    let mut req = proxy_client()
        .request(method, url)
        .header(FORWARDED_BY, signed);
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != FORWARDED_BY {
            req = req.header(name, value);
        }
    }
    let progress = Progress::new();
    let touch = progress.clone();
    let body = body.inspect_ok(move |_| touch.touch());
    let exchange = async {
        let resp = req
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| ApiError::Unavailable(format!("node {node} cannot be reached: {e}")))?;
        progress.touch();
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out_headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                if let Ok(n) = HeaderName::from_bytes(name.as_str().as_bytes()) {
                    out_headers.insert(n, value.clone());
                }
            }
        }
        // Playlists, segments and tus answers are small: read the whole answer (no copy beyond
        // the one the socket needs) so the reply type stays one `Bytes` body.
        let bytes = resp
            .bytes_stream()
            .map_err(|e| ApiError::Unavailable(format!("node {node} stopped answering: {e}")))
            .try_fold(bytes::BytesMut::new(), |mut acc, chunk| {
                progress.touch();
                acc.extend_from_slice(&chunk);
                async move { Ok(acc) }
            })
            .await?
            .freeze();
        let mut r = Response::new(bytes);
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        Ok(r)
    };
    let idle = app.config.limits.body_idle();
    tokio::select! {
        answer = exchange => answer,
        silent = until_silent(&progress, idle, &base) => Err(ApiError::GatewayTimeout(format!(
            "node {node} has held this request for {} s without answering, and its /health \
             did not answer within {} s; retry",
            silent.as_secs(),
            idle.as_secs()
        ))),
    }
}

/// When a forward last moved (a byte of its body taken, its answer begun or a byte of it),
/// shared between the forward and its watch ([`until_silent`]).
#[derive(Clone)]
struct Progress {
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the last progress.
    last_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: Default::default(),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last progress.
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Resolves, with how long the forward had been held, once it has made no progress for `idle`
/// and the node at `base` then does not answer `GET /health` with a success within `idle`.
/// A node that answers is waited for again, `idle` at a time.
async fn until_silent(progress: &Progress, idle: Duration, base: &str) -> Duration {
    loop {
        let silent = progress.silent_for();
        if silent < idle {
            tokio::time::sleep(idle - silent).await;
            continue;
        }
        let health = proxy_client().get(format!("{base}/health")).send();
        match tokio::time::timeout(idle, health).await {
            Ok(Ok(r)) if r.status().is_success() => progress.touch(),
            _ => return progress.start.elapsed(),
        }
    }
}

fn proxy_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default()
    })
}

/// How many times one request is forwarded at most, when the node it went to fails or leaves
/// while it is on its way (`http::stream`'s session requests, `http::tus`'s `HEAD`).
pub const MAX_FORWARDS: usize = 4;

/// How long a failed forward waits for this node's view to drop the node it went to before it
/// tries that node again: one heartbeat (a killed node is dropped as soon as its cluster link
/// closes, well within it). Zero on a node without peers (it forwards nothing).
pub fn forward_retry_wait(cluster: Option<&crate::config::ClusterConfig>) -> Duration {
    cluster.map_or(Duration::ZERO, |c| c.heartbeat)
}

/// Resolves once `live()` is false (at once if it already is), checked again at each change
/// of this node's cluster view (`changes`, from `Cluster::changes`); never while it stays
/// true. `live` asks the view about the node a request was forwarded to: the view drops a
/// killed node when its cluster link closes and fences a hung one after `fence_after` missed
/// heartbeats, so a forward raced against this ends when the view gives its node up, not on
/// a timer of its own.
async fn until_dropped(changes: &mut tokio::sync::watch::Receiver<u64>, live: impl Fn() -> bool) {
    loop {
        if !live() {
            return;
        }
        if changes.changed().await.is_err() {
            // The view's sender is gone (the node is stopping): it will not change again.
            std::future::pending::<()>().await;
        }
    }
}

/// What came of one forward raced against this node's cluster view ([`race_forward`]).
pub enum Raced {
    /// The node answered.
    Answer(Response<Bytes>),
    /// The view dropped the node: while the forward was pending (`None`: a hung node, fenced),
    /// or within the wait after it failed (that failure). The request may be routed again.
    Dropped(Option<ApiError>),
    /// The forward failed and the view still held the node live when the wait ended.
    Failed(ApiError),
}

/// Run `forward` (a request on its way to a node) raced against this node's view of that node
/// (`live`, checked again at each change of the view, `changes`: a killed node is
/// dropped when its cluster link closes, a hung one fenced after `fence_after` missed
/// heartbeats); if it fails, wait up to
/// `wait` ([`forward_retry_wait`], or zero) for the view to drop the node. The one step every
/// forward that must outlive its node's death or hang takes (`http::stream`'s session
/// requests, `http::tus`'s); what to do next (forward again, route again, give up) is the
/// caller's, since only some requests can be sent twice.
pub async fn race_forward(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    live: impl Fn() -> bool,
    wait: Duration,
    forward: impl std::future::Future<Output = Result<Response<Bytes>, ApiError>>,
) -> Raced {
    changes.borrow_and_update();
    let failed = tokio::select! {
        answer = forward => match answer {
            Ok(answer) => return Raced::Answer(answer),
            Err(e) => e,
        },
        _ = until_dropped(changes, &live) => return Raced::Dropped(None),
    };
    match tokio::time::timeout(wait, until_dropped(changes, &live)).await {
        Ok(()) => Raced::Dropped(Some(failed)),
        Err(_) => Raced::Failed(failed),
    }
}

/// An empty request body, for GET and HEAD.
pub fn empty_body() -> impl Stream<Item = Result<Bytes, warp::Error>> + Send + Sync + 'static {
    futures::stream::empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback HTTP server whose every connection is answered `200` at once (`answer`) or
    /// held open unanswered (a wedged listener); its base URL.
    async fn health_server(answer: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                if !answer {
                    held.push(conn);
                    continue;
                }
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if conn.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        base
    }

    /// A forward silent past the bound ends once `/health` is silent too, after the two
    /// bounds; while `/health` answers, it is waited for. Real time (the `/health` requests
    /// are real I/O): bounds of 500 ms, far above a loopback answer's time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_forward_ends_only_when_health_is_silent_too() {
        let idle = Duration::from_millis(500);
        let wedged = health_server(false).await;
        let progress = Progress::new();
        let held = until_silent(&progress, idle, &wedged).await;
        assert!(
            held >= 2 * idle,
            "silent for the bound, then /health for the bound: {held:?}"
        );

        let working = health_server(true).await;
        let progress = Progress::new();
        let waited = tokio::time::timeout(6 * idle, until_silent(&progress, idle, &working)).await;
        assert!(
            waited.is_err(),
            "a node that answers /health is waited for: {waited:?}"
        );
        // Each answer counted as progress: the watch slept its bound again after it.
        assert!(
            progress.silent_for() < 2 * idle,
            "{:?}",
            progress.silent_for()
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_peer_with_the_cluster_secret_can_forward() {
        let me = "node-1";
        let (get, patch) = (Method::GET, Method::PATCH);
        let now = 1_000_000;
        let at = |offset: &str| headers(&[("upload-offset", offset)]);
        let signed = sign("s3cret", "node-2", &patch, "/files/x", &at("0"), now);
        let with = |v: &str, offset: &str| {
            let mut h = at(offset);
            h.insert(FORWARDED_BY, v.parse().unwrap());
            h
        };
        let ok = |h: &HeaderMap, m: &Method, p: &str, t: i64| {
            check(Some("s3cret"), me, m, p, h, t).is_ok()
        };
        assert!(ok(&with(&signed, "0"), &patch, "/files/x", now));
        assert!(
            ok(&HeaderMap::new(), &get, "/anything", now),
            "no header: not forwarded"
        );
        // What a client could send: a bare node id, a wrong secret, another request.
        assert!(!ok(&with("node-2", "0"), &patch, "/files/x", now));
        let forged = sign("guess", "node-2", &patch, "/files/x", &at("0"), now);
        assert!(!ok(&with(&forged, "0"), &patch, "/files/x", now));
        assert!(
            !ok(&with(&signed, "6000"), &patch, "/files/x", now),
            "another offset"
        );
        assert!(
            !ok(&with(&signed, "0"), &patch, "/files/y", now),
            "another path"
        );
        assert!(
            !ok(&with(&signed, "0"), &get, "/files/x", now),
            "another method"
        );
        assert!(
            !ok(&with(&signed, "0"), &patch, "/files/x", now + 31_000),
            "too old"
        );
        let from_self = sign("s3cret", "node-1", &patch, "/files/x", &at("0"), now);
        assert!(
            !ok(&with(&from_self, "0"), &patch, "/files/x", now),
            "not a peer"
        );
        // A node without a cluster accepts no forwarded request at all.
        assert!(check(None, me, &patch, "/files/x", &with(&signed, "0"), now).is_err());
        let e = check(Some("s3cret"), me, &patch, "/files/x", &with("x", "0"), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Reel-Forwarded-By"), "{e}");
    }
}
