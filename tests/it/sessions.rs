//! Playback sessions on one node: sticky serving, the segment cache (single flight), read-ahead
//! that never delays the requested segment, the playback log and its timeline, HTTP details.
//!
//! Cluster cases (a second node redirecting, failover after the home node dies) need the
//! cluster issue; here the routing seam is driven with a stand-in `ClusterView`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use ractor::Actor;
use reel::actors::session::{SessionActor, SessionArgs, SessionHandle};
use reel::actors::NodeContext;
use reel::config::StreamingConfig;

use reel::storage::keys::RenditionFile;
use reel::storage::playback::{
    read_jsonl, read_sqlite, CacheOutcome, PlaybackEvent, PlaybackLog, PlaybackRecord, RenditionTag,
};
use reel::storage::Storage;
use reel::streaming::cache::{Lookup, SegmentCache};
use reel::streaming::session::{ClusterView, SessionId};
use reel::streaming::timeline::Timeline;
use reel::streaming::{RenditionInfo, Streaming, VideoInfo};

use crate::helpers::*;

/// An in-memory object store that counts reads per key and can hold reads of chosen keys at a
/// gate until the test opens it (a slow store without sleeps).
#[derive(Debug)]
pub struct GatedStore {
    inner: InMemory,
    reads: Mutex<HashMap<String, usize>>,
    gated_suffix: Mutex<Option<String>>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Display for GatedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatedStore")
    }
}

impl GatedStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: InMemory::new(),
            reads: Mutex::new(HashMap::new()),
            gated_suffix: Mutex::new(None),
            gate: tokio::sync::watch::channel(true).0,
        })
    }
    /// Hold reads of keys ending with `suffix` until [`GatedStore::open`].
    pub fn close_for(&self, suffix: &str) {
        *self.gated_suffix.lock().unwrap() = Some(suffix.to_string());
        self.gate.send_replace(false);
    }
    pub fn open(&self) {
        self.gate.send_replace(true);
    }
    pub fn reads(&self, key: &str) -> usize {
        self.reads.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.to_string();
        *self.reads.lock().unwrap().entry(key.clone()).or_default() += 1;
        let gated = self
            .gated_suffix
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|s| key.ends_with(s));
        if gated {
            let mut rx = self.gate.subscribe();
            let _ = rx.wait_for(|open| *open).await;
        }
        self.inner.get_opts(location, options).await
    }
    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_misses_of_one_segment_make_one_store_read() {
    let store = GatedStore::new();
    let key = "videos/v/240p/00003.m4s";
    store
        .put(&ObjectPath::from(key), PutPayload::from(vec![7u8; 50_000]))
        .await
        .unwrap();
    let storage = Storage::from_store(store.clone());
    let cache = SegmentCache::new(10 << 20);
    // Hold the read so all 100 requests are surely concurrent.
    store.close_for("00003.m4s");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, storage) = (cache.clone(), storage.clone());
            tokio::spawn(async move { cache.get(&storage, key).await })
        })
        .collect();
    let c = cache.clone();
    wait_until("100 lookups in flight", Duration::from_secs(10), || {
        let s = c.stats();
        async move { s.misses + s.joined == 100 }
    })
    .await;
    store.open();
    let mut lookups = Vec::new();
    for t in tasks {
        let (obj, lookup) = t.await.unwrap().unwrap();
        assert_eq!(obj.unwrap().bytes.len(), 50_000, "whole segment");
        lookups.push(lookup);
    }
    assert_eq!(
        store.reads(key),
        1,
        "one object-store read for 100 requests"
    );
    assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
    assert_eq!(lookups.iter().filter(|l| **l == Lookup::Joined).count(), 99);
    // And the next request is a plain hit.
    assert_eq!(cache.get(&storage, key).await.unwrap().1, Lookup::Hit);
    assert_eq!(store.reads(key), 1);
}

const VID: &str = "0123456789abcdef0123456789abcdef";
/// The directory the test rendition is stored in: an attempt directory, as the commit names it.
const DIR: &str = "240p/e1-00000000000000ab-a1";

fn tag() -> RenditionTag {
    RenditionTag {
        name: "240p".into(),
        width: 320,
        height: 240,
        bandwidth: 500_000,
    }
}

/// A node context over `store` with one session's worth of services, without HTTP.
async fn session_fixture(
    store: Arc<GatedStore>,
    dir: &Path,
    streaming: StreamingConfig,
) -> (Arc<NodeContext>, Streaming, Arc<VideoInfo>) {
    let node = node_id();
    let log = PlaybackLog::open(dir, Default::default()).unwrap();
    let s = Streaming::new(&node, streaming, log);
    let ctx = Arc::new(NodeContext {
        streaming: s.clone(),
        ..NodeContext::for_tests(&node, Storage::from_store(store.clone()), dir)
    });
    for k in 0..6 {
        let key = format!("videos/{VID}/{DIR}/{k:05}.m4s");
        let bytes = vec![k as u8; 1000 + k];
        store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .unwrap();
    }
    let video = Arc::new(VideoInfo {
        video_id: VID.into(),
        renditions: [(
            "240p".to_string(),
            RenditionInfo {
                index: 0,
                tag: Arc::new(tag()),
                segments: 6,
                dir: DIR.into(),
            },
        )]
        .into_iter()
        .collect(),
    });
    (ctx, s, video)
}

/// A session of `video` homed on `ctx`'s node, and its id.
fn new_session(
    ctx: &Arc<NodeContext>,
    streaming: &Streaming,
    video: Arc<VideoInfo>,
) -> (Arc<SessionHandle>, String) {
    let session = SessionId::new(&ctx.node_id);
    let sid = session.to_string();
    let handle = SessionHandle::new(ctx.clone(), streaming.clone(), session, video);
    (handle, sid)
}

async fn serve(handle: &Arc<SessionHandle>, k: usize) -> reel::actors::session::Served {
    tokio::time::timeout(
        Duration::from_secs(5),
        handle.serve(VID, "240p", RenditionFile::Segment(k)),
    )
    .await
    .expect("answered within 5 s: never held by read-ahead")
    .expect("served")
}

fn find(recs: &[PlaybackRecord], event: PlaybackEvent, k: usize) -> Vec<&PlaybackRecord> {
    recs.iter()
        .filter(|r| r.event == event && r.segment == Some(k))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_store_delays_read_ahead_but_never_the_requested_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = GatedStore::new();
    let cfg = StreamingConfig {
        max_prefetches: 1,
        ..Default::default()
    };
    let (ctx, streaming, video) = session_fixture(store.clone(), dir.path(), cfg).await;
    let (handle, sid) = new_session(&ctx, &streaming, video);
    let (actor, _) = Actor::spawn(
        None,
        SessionActor,
        SessionArgs {
            handle: handle.clone(),
        },
    )
    .await
    .unwrap();

    // Reads of segment 1 hang until the gate opens.
    store.close_for("/00001.m4s");
    let s0 = serve(&handle, 0).await;
    assert_eq!(&s0.object.bytes[..], &vec![0u8; 1000][..]);
    assert_eq!(s0.lookup, Lookup::Miss);
    // Segment 2 while the prefetch of 1 holds the only permit: served at once; its read-ahead
    // of 3 is skipped, not queued.
    let s2 = serve(&handle, 2).await;
    assert_eq!(s2.object.bytes.len(), 1002);
    streaming.log.flush().await;
    let recs = read_jsonl(dir.path(), &sid).unwrap();
    let start1 = find(&recs, PlaybackEvent::PrefetchStart, 1);
    assert_eq!(start1.len(), 1, "{recs:#?}");
    assert_eq!(start1[0].cache, Some(CacheOutcome::Miss));
    assert!(find(&recs, PlaybackEvent::PrefetchResult, 1).is_empty());
    let skipped = find(&recs, PlaybackEvent::PrefetchResult, 3);
    assert_eq!(skipped[0].result.as_deref(), Some("skipped_busy"));
    assert!(find(&recs, PlaybackEvent::PrefetchStart, 3).is_empty());
    let serve0 = find(&recs, PlaybackEvent::Serve, 0)[0];
    assert_eq!(serve0.rendition.as_ref(), Some(&tag()));
    assert_eq!(serve0.node_id, ctx.node_id);
    assert_eq!(serve0.video_id, VID);

    // Open the gate: the prefetch completes and segment 1 is then a cache hit.
    store.open();
    let (s, d) = (streaming.clone(), dir.path().to_path_buf());
    let sid2 = sid.clone();
    wait_until("prefetch of 1 ends", Duration::from_secs(10), || {
        let (s, d, sid) = (s.clone(), d.clone(), sid2.clone());
        async move {
            s.log.flush().await;
            let recs = read_jsonl(&d, &sid).unwrap();
            !find(&recs, PlaybackEvent::PrefetchResult, 1).is_empty()
        }
    })
    .await;
    let s1 = serve(&handle, 1).await;
    assert_eq!(s1.lookup, Lookup::Hit);
    assert_eq!(
        &s1.object.bytes[..],
        &vec![1u8; 1001][..],
        "the right segment, whole"
    );
    assert_eq!(store.reads(&format!("videos/{VID}/{DIR}/00001.m4s")), 1);
    streaming.log.flush().await;
    let recs = read_jsonl(dir.path(), &sid).unwrap();
    assert_eq!(
        find(&recs, PlaybackEvent::PrefetchResult, 1)[0]
            .result
            .as_deref(),
        Some("fetched")
    );
    assert_eq!(
        find(&recs, PlaybackEvent::Serve, 1)[0].cache,
        Some(CacheOutcome::Hit)
    );
    // The last segment has nothing to read ahead; a segment past the end is refused.
    serve(&handle, 5).await;
    let past = handle.serve(VID, "240p", RenditionFile::Segment(6)).await;
    assert!(past.is_err());
    let foreign = handle
        .serve(
            "ffffffffffffffffffffffffffffffff",
            "240p",
            RenditionFile::Segment(0),
        )
        .await;
    assert!(foreign.is_err(), "a session serves only its own video");
    streaming.log.flush().await;
    let recs = read_jsonl(dir.path(), &sid).unwrap();
    assert!(find(&recs, PlaybackEvent::PrefetchStart, 6).is_empty());
    assert_eq!(
        recs,
        read_sqlite(dir.path(), &sid).unwrap(),
        "both logs agree"
    );
    actor.stop(None);
}

/// A player asking for one segment again (a retry, a seek back) reads the next one ahead again
/// only once it has left the cache: while nothing has left the cache the session knows it is
/// still there without asking (issue 11, P1), and after an eviction it asks and reads again.
#[tokio::test(flavor = "multi_thread")]
async fn a_segment_asked_again_reads_ahead_again_only_once_the_next_has_left_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = GatedStore::new();
    let cfg = StreamingConfig {
        cache_mib: 1,
        prefetch_depth: 1,
        ..Default::default()
    };
    let (ctx, streaming, video) = session_fixture(store.clone(), dir.path(), cfg).await;
    let (handle, sid) = new_session(&ctx, &streaming, video);
    let seg1 = format!("videos/{VID}/{DIR}/00001.m4s");
    // Waits until `n` read-aheads of segment 1 have ended.
    let read_ahead = |n: usize| {
        let (s, d, id) = (streaming.clone(), dir.path().to_path_buf(), sid.clone());
        wait_until(
            "read-ahead of segment 1 ends",
            Duration::from_secs(10),
            move || {
                let (s, d, id) = (s.clone(), d.clone(), id.clone());
                async move {
                    s.log.flush().await;
                    let recs = read_jsonl(&d, &id).unwrap();
                    find(&recs, PlaybackEvent::PrefetchResult, 1).len() == n
                }
            },
        )
    };
    serve(&handle, 0).await;
    read_ahead(1).await;
    for _ in 0..3 {
        serve(&handle, 0).await;
    }
    streaming.log.flush().await;
    let recs = read_jsonl(dir.path(), &sid).unwrap();
    assert_eq!(
        find(&recs, PlaybackEvent::PrefetchStart, 1).len(),
        1,
        "{recs:#?}"
    );
    assert_eq!(store.reads(&seg1), 1);

    // Fill the cache with other objects: segments 0 and 1 are evicted.
    let departed = streaming.cache.departures();
    for k in 0..3 {
        let key = format!("videos/{VID}/filler/{k}");
        store
            .put(
                &ObjectPath::from(key.as_str()),
                PutPayload::from(vec![9u8; 400 << 10]),
            )
            .await
            .unwrap();
        streaming.cache.get(&ctx.storage, &key).await.unwrap();
    }
    assert!(!streaming.cache.contains(&seg1));
    assert!(streaming.cache.departures() > departed);
    serve(&handle, 0).await;
    read_ahead(2).await;
    let recs = read_jsonl(dir.path(), &sid).unwrap();
    let again = find(&recs, PlaybackEvent::PrefetchStart, 1);
    assert_eq!(again.len(), 2, "{recs:#?}");
    assert_eq!(again[1].cache, Some(CacheOutcome::Miss));
    assert_eq!(store.reads(&seg1), 2);
}

/// Requests racing to open one session all get the one actor the first started, also while
/// that actor is still starting (`spawn_linked` returns before the actor's own task marks it
/// running). On this single-threaded runtime the queued opens reach the supervisor before the
/// new actor's task can run: taken for dead, it was dropped from the session table and every
/// later open failed ("already registered") until it stopped, idle.
#[tokio::test]
async fn opens_racing_for_one_session_get_its_one_actor() {
    use reel::actors::session::SessionTable;
    use reel::actors::session_supervisor::{
        OpenReason, SessionSupervisor, SessionSupervisorArgs, SessionSupervisorMsg,
    };
    let dir = tempfile::tempdir().unwrap();
    let (ctx, streaming, video) =
        session_fixture(GatedStore::new(), dir.path(), StreamingConfig::default()).await;
    let table = SessionTable::default();
    let (sup, _) = Actor::spawn(
        None,
        SessionSupervisor,
        SessionSupervisorArgs {
            ctx: ctx.clone(),
            streaming,
            table: table.clone(),
        },
    )
    .await
    .unwrap();
    let session = SessionId::new(&ctx.node_id);
    let opens = (0..32).map(|_| {
        let (sup, session, video) = (sup.clone(), session.clone(), video.clone());
        async move {
            ractor::call_t!(
                sup,
                |reply| SessionSupervisorMsg::Open {
                    session,
                    video,
                    reason: OpenReason::Resumed,
                    reply,
                },
                5000
            )
        }
    });
    let handles: Vec<_> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("opened"))
        .collect();
    assert!(
        handles.iter().all(|h| Arc::ptr_eq(h, &handles[0])),
        "one handle for every open"
    );
    let listed = table.get(&session.to_string()).expect("listed");
    assert!(Arc::ptr_eq(&listed, &handles[0]));
    let running = ractor::call_t!(sup, SessionSupervisorMsg::Count, 5000).unwrap();
    assert_eq!(running, 1);
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_stops_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StreamingConfig {
        session_idle_seconds: 1,
        ..Default::default()
    };
    let (ctx, streaming, video) = session_fixture(GatedStore::new(), dir.path(), cfg).await;
    let session = SessionHandle::new(ctx, streaming, SessionId::new("n"), video);
    let (_actor, handle) = Actor::spawn(
        None,
        SessionActor,
        SessionArgs {
            handle: session.clone(),
        },
    )
    .await
    .unwrap();
    serve(&session, 0).await;
    assert!(session.is_open());
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stopped within 10 s of idleness")
        .unwrap();
}

/// Ready video on a fresh node: (dir, node, base, video id).
async fn ready_node(kind: &str) -> (tempfile::TempDir, reel::RunningNode, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let (status, v) = upload(&base, &clip(kind)).await;
    assert!(status == 202 || status == 200, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    (dir, node, base, id)
}

/// Wait (bounded, 10 s) until the node runs no session: idle ones have stopped.
async fn wait_no_sessions(node: &reel::RunningNode) {
    let sessions = node.node.refs.sessions.clone();
    wait_until("the idle sessions stop", Duration::from_secs(10), || {
        let sessions = sessions.clone();
        async move {
            ractor::call_t!(
                sessions,
                reel::actors::session_supervisor::SessionSupervisorMsg::Count,
                1000
            )
            .unwrap()
                == 0
        }
    })
    .await;
}

/// Records of `session` from the node's JSON-lines log, after a flush.
pub async fn session_records(
    node: &reel::RunningNode,
    data_dir: &Path,
    session: &str,
) -> Vec<PlaybackRecord> {
    node.node.ctx.streaming.log.flush().await;
    read_jsonl(data_dir, session).unwrap()
}

/// Every session id that started on the node (from its JSON-lines log).
pub async fn started_sessions(node: &reel::RunningNode, data_dir: &Path) -> Vec<String> {
    node.node.ctx.streaming.log.flush().await;
    let text = std::fs::read_to_string(data_dir.join("playback.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<PlaybackRecord>(l).ok())
        .filter(|r| r.event == PlaybackEvent::SessionStart)
        .map(|r| r.session_id)
        .collect()
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rq = reqwest::Client::new().get(url);
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    rq.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_served_by_its_node_with_read_ahead_logs_and_http_semantics() {
    let (dir, node, base, id) = ready_node("av").await;
    let master = get(&format!("{base}/videos/{id}/master.m3u8"), &[]).await;
    assert_eq!(master.status(), 200);
    assert_eq!(
        master.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let sid = master.headers()["x-reel-session"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        sid.starts_with(&format!("{}-", node.node.ctx.node_id)),
        "{sid}"
    );
    let vars = variants(&format!("{base}/videos/{id}/master.m3u8")).await;
    assert!(vars
        .iter()
        .all(|v| v.uri.starts_with("s/") && v.uri.ends_with("/index.m3u8")));
    assert!(
        vars.iter().all(|v| !v.uri.contains(&sid)),
        "a new session per request"
    );
    let sbase = format!("{base}/videos/{id}/s/{sid}");

    // The media playlist under the session: relative names resolve under the session path.
    let segs = segments(&format!("{sbase}/240p/index.m3u8")).await;
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[0].0, "00000.m4s");
    let init = get(&format!("{sbase}/240p/init.mp4"), &[]).await;
    assert_eq!(init.status(), 200);
    assert_eq!(init.headers()["content-type"], "video/mp4");

    let s0 = get(&format!("{sbase}/240p/00000.m4s"), &[]).await;
    assert_eq!(s0.status(), 200);
    let h = s0.headers().clone();
    assert_eq!(h["content-type"], "video/mp4");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["accept-ranges"], "bytes");
    let etag = h["etag"].to_str().unwrap().to_string();
    let full = s0.bytes().await.unwrap();
    let playlist = get(&format!("{sbase}/240p/index.m3u8"), &[]).await;
    assert_eq!(playlist.headers()["cache-control"], "public, max-age=10");

    // Range (RFC 9110 section 14): 206 with the exact bytes, 416 past the end, 304 on ETag.
    let part = get(
        &format!("{sbase}/240p/00000.m4s"),
        &[("range", "bytes=10-109")],
    )
    .await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-109/{}", full.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), full.slice(10..110));
    let suffix = get(&format!("{sbase}/240p/00000.m4s"), &[("range", "bytes=-5")]).await;
    assert_eq!(suffix.status(), 206);
    assert_eq!(suffix.bytes().await.unwrap(), full.slice(full.len() - 5..));
    let bad = get(
        &format!("{sbase}/240p/00000.m4s"),
        &[("range", &format!("bytes={}-", full.len() + 10))],
    )
    .await;
    assert_eq!(bad.status(), 416);
    assert_eq!(
        bad.headers()["content-range"],
        format!("bytes */{}", full.len()).as_str()
    );
    // The last zero bytes: valid syntax, nothing to send (issue 10).
    let zero = get(&format!("{sbase}/240p/00000.m4s"), &[("range", "bytes=-0")]).await;
    assert_eq!(zero.status(), 416);
    let cached = get(
        &format!("{sbase}/240p/00000.m4s"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(cached.status(), 304);

    // HEAD and the CORS preflight.
    let head = reqwest::Client::new()
        .head(format!("{sbase}/240p/00000.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        full.len().to_string().as_str()
    );
    let pre = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{sbase}/240p/00000.m4s"))
        .header("origin", "http://player.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "range")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Range"));

    // Serving 0 started read-ahead of 1; once it ends, 1 is a hit.
    let data = dir.path().to_path_buf();
    wait_until("prefetch of segment 1", Duration::from_secs(10), || {
        let (node, data, sid) = (&node, data.clone(), sid.clone());
        async move {
            let recs = session_records(node, &data, &sid).await;
            !find(&recs, PlaybackEvent::PrefetchResult, 1).is_empty()
        }
    })
    .await;
    assert_eq!(
        get(&format!("{sbase}/240p/00001.m4s"), &[]).await.status(),
        200
    );
    // A switch down and back up, as a player would.
    assert_eq!(
        get(&format!("{sbase}/180p/00002.m4s"), &[]).await.status(),
        200
    );
    assert_eq!(
        get(&format!("{sbase}/240p/00002.m4s"), &[]).await.status(),
        200
    );
    let recs = session_records(&node, &data, &sid).await;
    let start1 = find(&recs, PlaybackEvent::PrefetchStart, 1);
    assert!(start1
        .iter()
        .any(|r| r.rendition.as_ref().unwrap().name == "240p"));
    // Segment 0 was asked for seven times (whole, ranges, 304, HEAD): its read-ahead of 1 ran
    // and was logged once, since 1 stayed cached (issue 11: it used to be three records per
    // request).
    let read_ahead_240 = start1
        .iter()
        .filter(|r| r.rendition.as_ref().unwrap().name == "240p")
        .count();
    assert_eq!(read_ahead_240, 1, "{start1:#?}");
    let serve1 = find(&recs, PlaybackEvent::Serve, 1);
    assert_eq!(serve1[0].cache, Some(CacheOutcome::Hit), "{recs:#?}");
    assert!(recs
        .iter()
        .all(|r| r.node_id == node.node.ctx.node_id && r.video_id == id));
    assert_eq!(recs, read_sqlite(&data, &sid).unwrap());
    let t = Timeline::from_records(&sid, recs);
    let sw = t.switches();
    assert_eq!(sw.len(), 2, "{}", t.render_text());
    assert!(!sw[0].is_up() && sw[0].to.name == "180p");
    assert!(sw[1].is_up() && sw[1].to.name == "240p");

    // `reel session` reads the same log and draws the chart.
    let svg = data.join("chart.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(["session", &sid, "--data-dir"])
        .arg(&data)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rendition switches: 2"), "{text}");
    assert!(text.contains("DOWN 240p"), "{text}");
    assert!(text.contains("UP   180p"), "{text}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    // Bad and unknown sessions.
    let r = get(
        &format!("{base}/videos/{id}/s/..%2F..%2Fx/240p/00000.m4s"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("no session"), "{v}");
    // The session's id with another (unknown) video's path: no bytes of this video leak.
    let other = "ffffffffffffffffffffffffffffffff";
    let r = get(
        &format!("{base}/videos/{other}/s/{sid}/240p/00000.m4s"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = get(&format!("{base}/videos/{id}/no/such/path/here"), &[]).await;
    assert_eq!(r.status(), 404, "an unknown path is not a 405");
    let r = get(&format!("{sbase}/240p/00099.m4s"), &[]).await;
    assert_eq!(r.status(), 404);
    let r = get(&format!("{sbase}/999p/00000.m4s"), &[]).await;
    assert_eq!(r.status(), 404);
    node.stop().await;
}

/// A cluster view with fixed answers.
struct FixedView {
    live: Vec<String>,
    owner: String,
    bases: HashMap<String, String>,
}
impl ClusterView for FixedView {
    fn is_live(&self, node: &str) -> bool {
        self.live.iter().any(|n| n == node)
    }
    fn owner(&self, _key: &str) -> Option<String> {
        Some(self.owner.clone())
    }
    fn http_base(&self, node: &str) -> Option<String> {
        self.bases.get(node).cloned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_stay_home_while_the_ring_changes_and_are_taken_over_when_home_dies() {
    let (dir, node, base, id) = ready_node("av").await;
    let me = node.node.ctx.node_id.clone();
    let streaming = node.node.ctx.streaming.clone();
    let master = get(&format!("{base}/videos/{id}/master.m3u8"), &[]).await;
    let sid = master.headers()["x-reel-session"]
        .to_str()
        .unwrap()
        .to_string();
    // The ring now prefers another node for everything: the session stays here.
    streaming.set_cluster(Arc::new(FixedView {
        live: vec![me.clone(), "other".into()],
        owner: "other".into(),
        bases: [("other".to_string(), "http://127.0.0.1:9".to_string())].into(),
    }));
    let r = get(&format!("{base}/videos/{id}/s/{sid}/240p/00000.m4s"), &[]).await;
    assert_eq!(r.status(), 200, "served at home whatever the ring says");
    // A session homed on a live other node is forwarded there (here: an address where nothing
    // listens, so the forward fails with 503 naming the node), never served here.
    let foreign = format!("other-{:016x}", 42);
    let r = get(
        &format!("{base}/videos/{id}/s/{foreign}/240p/00000.m4s"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("node other"),
        "{body}"
    );
    // The other node died and the ring picks this node: it takes over, cold, and logs it.
    streaming.set_cluster(Arc::new(FixedView {
        live: vec![me.clone()],
        owner: me.clone(),
        bases: HashMap::new(),
    }));
    for k in 0..3 {
        let r = get(
            &format!("{base}/videos/{id}/s/{foreign}/240p/{k:05}.m4s"),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let data: PathBuf = dir.path().into();
    let recs = session_records(&node, &data, &foreign).await;
    let moved: Vec<_> = recs
        .iter()
        .filter(|r| r.event == PlaybackEvent::SessionReassigned)
        .collect();
    assert_eq!(moved.len(), 1, "one takeover: {recs:#?}");
    assert_eq!(moved[0].node_id, me);
    assert!(moved[0].detail.as_deref().unwrap().contains("other"));
    let serves: Vec<_> = recs
        .iter()
        .filter(|r| r.event == PlaybackEvent::Serve)
        .collect();
    assert_eq!(serves.len(), 3);
    assert!(serves.iter().all(|r| r.node_id == me));
    let text = Timeline::from_records(&foreign, recs).render_text();
    assert!(text.contains(&format!("reassigned to {me}")), "{text}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_plays_a_session_to_the_end_from_one_node() {
    let (dir, node, base, id) = ready_node("av").await;
    play(&format!("{base}/videos/{id}/master.m3u8"))
        .await
        .expect("ffmpeg plays through the session");
    let data: PathBuf = dir.path().into();
    let sessions = started_sessions(&node, &data).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let recs = session_records(&node, &data, &sessions[0]).await;
    let served: std::collections::BTreeSet<_> = recs
        .iter()
        .filter(|r| r.event == PlaybackEvent::Serve)
        .map(|r| {
            assert_eq!(r.node_id, node.node.ctx.node_id);
            r.segment.unwrap()
        })
        .collect();
    assert_eq!(served.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_resumes_cold_on_its_home_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.streaming.session_idle_seconds = 1;
    let node = start(config).await;
    let base = node.url();
    let (_, v) = upload(&base, &clip("av")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    let master = get(&format!("{base}/videos/{id}/master.m3u8"), &[]).await;
    let sid = master.headers()["x-reel-session"]
        .to_str()
        .unwrap()
        .to_string();
    let seg = format!("{base}/videos/{id}/s/{sid}/240p/00000.m4s");
    assert_eq!(get(&seg, &[]).await.status(), 200);
    wait_no_sessions(&node).await;
    // The player comes back after a pause: same id, same node, a cold start that is logged.
    assert_eq!(get(&seg, &[]).await.status(), 200);
    let recs = session_records(&node, dir.path(), &sid).await;
    let kinds: Vec<_> = recs.iter().map(|r| r.event.as_str()).collect();
    let end = kinds.iter().position(|k| *k == "SESSION_END").unwrap();
    let resumed = kinds
        .iter()
        .position(|k| *k == "SESSION_REASSIGNED")
        .unwrap();
    assert!(end < resumed, "{kinds:?}");
    assert!(recs[resumed].detail.as_deref().unwrap().contains("resumed"));
    assert!(recs.iter().all(|r| r.node_id == node.node.ctx.node_id));
    // Paused again, then back with requests in parallel (a player fetching a playlist and
    // segments at once): every one is served, and so is the next.
    // Each client's connection is opened first, so that the requests arrive together.
    let clients: Vec<reqwest::Client> = (0..32).map(|_| reqwest::Client::new()).collect();
    for c in &clients {
        assert!(c
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    wait_no_sessions(&node).await;
    let burst = clients.iter().map(|c| c.get(&seg).send());
    let statuses: Vec<u16> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(get(&seg, &[]).await.status(), 200);
    node.stop().await;
}

/// What node B knows of node A in the failover test: whether A lives, and where it listens.
struct PeerView {
    me: String,
    peer: String,
    peer_base: String,
    peer_live: Arc<std::sync::atomic::AtomicBool>,
}
impl ClusterView for PeerView {
    fn is_live(&self, node: &str) -> bool {
        node == self.me
            || (node == self.peer && self.peer_live.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn owner(&self, _key: &str) -> Option<String> {
        Some(self.me.clone())
    }
    fn http_base(&self, node: &str) -> Option<String> {
        (node == self.peer).then(|| self.peer_base.clone())
    }
}

/// Two in-process nodes over one object store, the membership view stubbed (the ring is the
/// cluster issue's): while the home node A lives, requests reaching B are sent to A; after A
/// stops mid-playback, B takes the session over and the client plays to the end.
#[tokio::test(flavor = "multi_thread")]
async fn when_the_home_node_dies_mid_playback_another_node_takes_the_session_over() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    // The two nodes share the secret that signs forwarded requests, as a cluster's do.
    let mut config_a = test_config(dir_a.path());
    config_a.forward_secret = Some(reel::config::Secret::new("test-forwarding-secret"));
    let node_a = start(config_a).await;
    let (base_a, id_a) = (node_a.url(), node_a.node.ctx.node_id.clone());
    let (_, v) = upload(&base_a, &clip("av")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    wait_terminal(&base_a, &id, PROCESSING_DEADLINE).await;
    let mut config_b = test_config(dir_b.path());
    config_b.storage = reel::config::StorageLocation::Local(dir_a.path().join("objects"));
    config_b.forward_secret = Some(reel::config::Secret::new("test-forwarding-secret"));
    let node_b = start(config_b).await;
    let (base_b, id_b) = (node_b.url(), node_b.node.ctx.node_id.clone());
    let a_live = Arc::new(std::sync::atomic::AtomicBool::new(true));
    node_b.node.ctx.streaming.set_cluster(Arc::new(PeerView {
        me: id_b.clone(),
        peer: id_a.clone(),
        peer_base: base_a.clone(),
        peer_live: a_live.clone(),
    }));

    // The session starts on A; the client then talks to B (as through a load balancer).
    let master = get(&format!("{base_a}/videos/{id}/master.m3u8"), &[]).await;
    let sid = master.headers()["x-reel-session"]
        .to_str()
        .unwrap()
        .to_string();
    let via_b = |k: usize| format!("{base_b}/videos/{id}/s/{sid}/240p/{k:05}.m4s");
    let mut bodies = Vec::new();
    for k in 0..2 {
        // B forwards it to A, the session's home; the client stays on B (the timeline below
        // proves who served what).
        let r = get(&via_b(k), &[]).await;
        let status = r.status();
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        bodies.push(body);
    }
    // A dies; the membership notices.
    node_a.node.ctx.streaming.log.flush().await;
    node_a.stop().await;
    a_live.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = get(&via_b(2), &[]).await;
    assert_eq!(r.status(), 200);
    bodies.push(r.bytes().await.unwrap());
    assert!(bodies.iter().all(|b| !b.is_empty()));

    node_b.node.ctx.streaming.log.flush().await;
    let (t, _) = Timeline::load(&[dir_a.path().into(), dir_b.path().into()], &sid).unwrap();
    let text = t.render_text();
    assert_eq!(
        t.serving_nodes(),
        vec![id_a.clone(), id_b.clone()],
        "{text}"
    );
    let serves: Vec<_> = t
        .serves()
        .map(|r| (r.segment.unwrap(), r.node_id.clone()))
        .collect();
    assert_eq!(
        serves,
        vec![(0, id_a.clone()), (1, id_a.clone()), (2, id_b.clone())],
        "{text}"
    );
    let moved: Vec<_> = t
        .records
        .iter()
        .filter(|r| r.event == PlaybackEvent::SessionReassigned)
        .collect();
    assert_eq!(moved.len(), 1, "{text}");
    assert_eq!(moved[0].node_id, id_b);
    assert!(
        moved[0].detail.as_deref().unwrap().contains(&id_a),
        "{text}"
    );
    assert_eq!(
        t.serves().last().unwrap().cache,
        Some(CacheOutcome::Miss),
        "B starts cold"
    );
    node_b.stop().await;
}

/// Issue 4, item 7, over HTTP: 100 concurrent requests of one session for one uncached segment
/// cause one object-store read (the store counts reads; its gate holds the first read so the
/// others arrive while it is in flight, or find the segment cached after it).
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_requests_for_one_uncached_segment_read_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = GatedStore::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = reel::spawn_with_storage(
        test_config(dir.path()),
        reel::storage::Storage::from_store(store.clone()),
        listener,
    )
    .await
    .unwrap();
    let base = node.url();
    let (status, v) = upload(&base, &clip("av")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_terminal(&base, &id, PROCESSING_DEADLINE).await["state"],
        "ready"
    );
    let sid = start_session(&base, &id).await;
    // The directory the commit chose for 240p (an attempt directory), as the record says.
    let dir = rendition_dir(&base, &id, "240p").await;
    assert!(dir.starts_with("240p/e"), "{dir}");
    let key = format!("videos/{id}/{dir}/00002.m4s");
    let before = store.reads(&key);
    store.close_for(&format!("{dir}/00002.m4s"));
    let url = format!("{base}/videos/{id}/s/{sid}/240p/00002.m4s");
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(&url).send().await.unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap())
            })
        })
        .collect();
    // The first miss reaches the store and waits at the gate.
    wait_until(
        "the first read to reach the store",
        std::time::Duration::from_secs(30),
        || {
            let store = store.clone();
            let key = key.clone();
            async move { store.reads(&key) > before }
        },
    )
    .await;
    store.open();
    let mut bodies = Vec::new();
    for r in requests {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]) && !bodies[0].is_empty());
    assert_eq!(
        store.reads(&key) - before,
        1,
        "one object-store read for 100 requests"
    );
    node.stop().await;
}

/// Issue 10: a session id used on another video is answered without naming the session's
/// own video (an id seen in one player's URLs is no key to anything else).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_id_on_another_video_says_only_that_there_is_no_such_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let base = node.url();
    let mut ids = Vec::new();
    for kind in ["av", "video"] {
        let (_, v) = upload(&base, &clip(kind)).await;
        let id = v["video_id"].as_str().unwrap().to_string();
        let v = wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
        assert_eq!(v["state"], "ready", "{v}");
        ids.push(id);
    }
    let sid = start_session(&base, &ids[0]).await;
    let r = get(
        &format!("{base}/videos/{}/s/{sid}/240p/index.m3u8", ids[1]),
        &[],
    )
    .await;
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("no such session"), "{body}");
    assert!(
        !body.contains(&ids[0]),
        "the session's own video is not named: {body}"
    );
    node.stop().await;
}

/// Issue 11: sessions are bounded. A node that runs `max_sessions` sessions answers a request
/// that would open one more with `503` and `Retry-After`, and the sessions it runs keep
/// playing; once one ends, a new one gets in.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_at_its_session_cap_refuses_new_sessions_with_a_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.streaming.max_sessions = 2;
    config.streaming.session_idle_seconds = 1;
    let node = start(config).await;
    let base = node.url();
    let (_, v) = upload(&base, &clip("av")).await;
    let id = v["video_id"].as_str().unwrap().to_string();
    wait_terminal(&base, &id, PROCESSING_DEADLINE).await;
    let master = format!("{base}/videos/{id}/master.m3u8");
    let mut sids = Vec::new();
    for _ in 0..2 {
        let r = get(&master, &[]).await;
        assert_eq!(r.status(), 200);
        sids.push(r.headers()["x-reel-session"].to_str().unwrap().to_string());
    }
    let full = get(&master, &[]).await;
    assert_eq!(full.status(), 503);
    assert!(
        full.headers().contains_key("retry-after"),
        "{:?}",
        full.headers()
    );
    assert!(full.text().await.unwrap().contains("2 sessions"));
    for sid in &sids {
        let seg = format!("{base}/videos/{id}/s/{sid}/240p/00000.m4s");
        assert_eq!(
            get(&seg, &[]).await.status(),
            200,
            "a running session still plays"
        );
    }
    // Idle sessions stop (1 s here), and then a new player gets in.
    wait_no_sessions(&node).await;
    assert_eq!(get(&master, &[]).await.status(), 200);
    node.stop().await;
}

/// Issue 11: segment requests skip warp's filters (`http::stream::fast_route`), and must be
/// answered exactly as warp's routes answer them. warp's `path!` also takes the same path with
/// one trailing slash, which the fast route leaves to warp: so each request is sent both ways
/// and the two answers compared (status, the headers a player or cache reads, body). Sent on
/// a new connection, the fast route's request is answered at the connection's front
/// (`http::front`, without hyper); sent as HTTP/1.0, which the front leaves to hyper, by
/// hyper's side of the node's service: both are compared with warp's answer, `GET` and
/// `HEAD` at the front.
#[tokio::test(flavor = "multi_thread")]
async fn segment_requests_are_answered_the_same_with_or_without_warps_filters() {
    let (_dir, node, base, id) = ready_node("av").await;
    let sid = start_session(&base, &id).await;
    let seg = get(&format!("{base}/videos/{id}/240p/00000.m4s"), &[]).await;
    assert_eq!(seg.status(), 200);
    let etag = seg.headers()["etag"].to_str().unwrap().to_string();
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("/videos/{id}/240p/00000.m4s"), vec![]),
        (
            format!("/videos/{id}/240p/00000.m4s"),
            vec![("range", "bytes=10-99")],
        ),
        (
            format!("/videos/{id}/240p/00000.m4s"),
            vec![("range", "bytes=99999999-")],
        ),
        (
            format!("/videos/{id}/240p/00000.m4s"),
            vec![("if-none-match", &etag)],
        ),
        (format!("/videos/{id}/240p/index.m3u8"), vec![]),
        (format!("/videos/{id}/240p/init.mp4"), vec![]),
        (format!("/videos/{id}/9999p/00000.m4s"), vec![]),
        (format!("/videos/{id}/240p/99999.m4s"), vec![]),
        (format!("/videos/{id}/240p/secret.txt"), vec![]),
        (format!("/videos/{}/240p/00000.m4s", "0".repeat(32)), vec![]),
        (format!("/videos/{id}/s/{sid}/240p/00001.m4s"), vec![]),
        (
            format!("/videos/{id}/s/{sid}/240p/00001.m4s"),
            vec![("range", "bytes=0-0")],
        ),
        (format!("/videos/{id}/s/{sid}/240p/index.m3u8"), vec![]),
        (
            format!("/videos/{id}/s/nobody-0000000000000000/240p/00001.m4s"),
            vec![],
        ),
        (
            format!("/videos/{id}/s/not-a-session/240p/00001.m4s"),
            vec![],
        ),
    ];
    let at_front = || async {
        let (_, h) = get_json(&format!("{base}/health")).await;
        h["connections"]["answered_at_front"].as_u64().unwrap()
    };
    let before = at_front().await;
    let mut compared = Vec::new();
    for (path, headers) in &cases {
        let warp = get(&format!("{base}{path}/"), headers).await;
        let front = get(&format!("{base}{path}"), headers).await;
        let mut rq = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .version(reqwest::Version::HTTP_10);
        for (k, v) in headers {
            rq = rq.header(*k, *v);
        }
        let hyper = rq.send().await.unwrap();
        let head = |p: String| {
            let mut rq = reqwest::Client::new().head(p);
            for (k, v) in headers {
                rq = rq.header(*k, *v);
            }
            rq.send()
        };
        let (front_head, warp_head) = (
            head(format!("{base}{path}")).await.unwrap(),
            head(format!("{base}{path}/")).await.unwrap(),
        );
        compared.push((path.clone(), headers.clone(), front_head, warp_head, true));
        compared.push((
            path.clone(),
            headers.clone(),
            hyper,
            get(&format!("{base}{path}/"), headers).await,
            false,
        ));
        compared.push((path.clone(), headers.clone(), front, warp, false));
    }
    // Each case's GET and HEAD on a new connection, and only those, were answered at the
    // front (the HTTP/1.0 ones were hyper's; the trailing slash is not a fast route), but
    // for the two whose session names another home node:
    // those may have to be forwarded with the request's headers, which hyper's side does.
    let elsewhere = cases
        .iter()
        .filter(|(p, _)| p.contains("/s/nobody-") || p.contains("/s/not-a-session/"))
        .count();
    assert_eq!(elsewhere, 2);
    assert_eq!(
        at_front().await - before,
        2 * (cases.len() - elsewhere) as u64
    );
    for (path, headers, fast, warp, is_head) in compared {
        let headers = &headers;
        assert_eq!(fast.status(), warp.status(), "{path} {headers:?}");
        for h in [
            "content-type",
            "content-length",
            "content-range",
            "cache-control",
            "etag",
            "accept-ranges",
            "access-control-allow-origin",
            "access-control-expose-headers",
            "retry-after",
        ] {
            assert_eq!(
                fast.headers().get(h),
                warp.headers().get(h),
                "{h} of {path} {headers:?}"
            );
        }
        let status = fast.status();
        let (fast, warp) = (fast.bytes().await.unwrap(), warp.bytes().await.unwrap());
        assert_eq!(fast, warp, "body of {path} {headers:?} ({status})");
        assert!(!is_head || fast.is_empty(), "HEAD {path}: no body");
    }
    // The cases above reached both paths' answers: a whole segment, a part, 304, 404, 416.
    let statuses: std::collections::BTreeSet<u16> = {
        let mut s = std::collections::BTreeSet::new();
        for (path, headers) in &cases {
            s.insert(
                get(&format!("{base}{path}"), headers)
                    .await
                    .status()
                    .as_u16(),
            );
        }
        s
    };
    for want in [200, 206, 304, 404, 416] {
        assert!(statuses.contains(&want), "no {want} among {statuses:?}");
    }
    node.stop().await;
}
