//! Forwarding a request to the node that owns its key (design brief section 4: byte requests
//! are redirected or proxied to the home node's HTTP address; no video bytes travel over the
//! cluster link).
//!
//! reel proxies rather than redirects: the client keeps talking to the node it chose (behind a
//! plain load balancer, a redirect would pin it to one node's address, and when that node died
//! the client would have nowhere to go). Bodies stream both ways without being buffered.
//!
//! A forwarded request carries `Reel-Forwarded-By: {node}`. A node that receives a forwarded
//! request serves it itself even if its own ring view says otherwise: two nodes that briefly
//! disagree about the ring never bounce a request between them.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
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

/// Whether this request was already forwarded by another node.
pub fn was_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_BY)
}

/// Where a request should be served: `None` here, `Some(node)` forwarded to `node`.
///
/// `home` is the key's home on this node's ring. Forwarded requests are always served here.
pub fn target(app: &App, headers: &HeaderMap, home: &str) -> Option<String> {
    let me = app.node.ctx.cluster.self_id();
    (home != me && !was_forwarded(headers) && app.node.ctx.cluster.http_of(home).is_some())
        .then(|| home.to_string())
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
/// reached (`503`, so a client may retry; by then the ring may have moved the key).
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
    let mut req = proxy_client()
        .request(method, url)
        .header(FORWARDED_BY, app.node.ctx.cluster.self_id());
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            req = req.header(name, value);
        }
    }
    let resp = req
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|e| ApiError::Unavailable(format!("node {node} cannot be reached: {e}")))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
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
        .try_fold(bytes::BytesMut::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await?
        .freeze();
    let mut r = Response::new(bytes);
    *r.status_mut() = status;
    *r.headers_mut() = out_headers;
    Ok(r)
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

/// An empty request body, for GET and HEAD.
pub fn empty_body() -> impl Stream<Item = Result<Bytes, warp::Error>> + Send + Sync + 'static {
    futures::stream::empty()
}
