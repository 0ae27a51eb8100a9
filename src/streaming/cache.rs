//! The node-local segment cache (seed rule 8: "node-local and non-coherent; cache-on-read").
//!
//! A byte-bounded least-recently-used map from object key to the object's bytes, shared by every
//! session of the node, with single-flight misses: however many requests miss the same key at
//! once, one object-store read is made and every waiter gets its bytes.
//!
//! Correctness rules:
//! - Only whole objects enter the cache ([`Storage::get`] reads an object completely, or fails),
//!   under their exact object key, so a reader never sees a partial or foreign segment.
//! - Objects of ready videos are immutable (the multivariant playlist is the commit point), so
//!   an entry never goes stale; a missing object is not cached (no negative caching).
//! - The read runs in its own task: a caller that goes away (a client disconnect) does not
//!   cancel the read the others wait for, and the in-flight entry is always removed.
//! - `lru` counts entries, so the byte budget is kept here: least recently used entries are
//!   popped until the total fits. An object larger than the whole budget is returned uncached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::storage::{Object, Storage, StorageError};

type Fetch = Shared<BoxFuture<'static, Result<Option<Object>, Arc<StorageError>>>>;

/// Where a lookup's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Already in the cache.
    Hit,
    /// Another caller's read of the same key was in flight; this one waited for it.
    Joined,
    /// This call started the object-store read.
    Miss,
}

impl Lookup {
    /// Whether this lookup caused no object-store read of its own.
    pub fn is_hit(self) -> bool {
        !matches!(self, Lookup::Miss)
    }
}

/// Counters, for logs, tests and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that joined a read in flight.
    pub joined: u64,
    /// Lookups that started an object-store read.
    pub misses: u64,
    /// Entries evicted to stay within the budget.
    pub evictions: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
}

struct Inner {
    lru: lru::LruCache<String, Object>,
    bytes: usize,
    inflight: HashMap<String, Fetch>,
}

/// The cache. Share it as `Arc<SegmentCache>`.
pub struct SegmentCache {
    /// Byte budget (sum of cached object sizes).
    budget_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    joined: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    /// [`SegmentCache::departures`]; on a cache line of its own, which the counters above
    /// (added to on every lookup) do not write.
    departures: crossbeam_utils::CachePadded<AtomicU64>,
    /// Where reads run: the runtime current when the cache was made (the node's).
    tasks: super::NodeTasks,
}

impl std::fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCache")
            .field("budget_bytes", &self.budget_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentCache {
    /// A cache holding at most `budget_bytes` bytes of objects, whose reads run on the current
    /// runtime.
    pub fn new(budget_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            budget_bytes,
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                inflight: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            departures: Default::default(),
            tasks: super::NodeTasks::current(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times a key has stopped being cached or being read since the cache was made:
    /// an entry evicted, or a read that ended without entering the cache (it failed, found
    /// nothing, or was larger than the budget). While it has not changed, a key that was
    /// cached or being read still is (read without the lock: one load of a value written
    /// only when something leaves).
    pub fn departures(&self) -> u64 {
        self.departures.load(Ordering::Acquire)
    }

    /// Whether `key` is cached or being read, without touching its recency.
    pub fn is_cached_or_inflight(&self, key: &str) -> bool {
        let g = self.lock();
        g.lru.contains(key) || g.inflight.contains_key(key)
    }

    /// Whether `key` is cached (completely), without touching its recency.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().lru.contains(key)
    }

    /// The object at `key` if it is cached now (counted as a hit and made the most recent),
    /// without waiting; `None` otherwise, and then nothing is counted or read: the caller
    /// goes on to [`SegmentCache::get`]. A cache hit needs no `await` (issue 11, P1).
    pub fn get_cached(&self, key: &str) -> Option<Object> {
        let obj = self.lock().lru.get(key).cloned()?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(obj)
    }

    /// The object at `key`, from the cache or (once, however many callers miss together) from
    /// `storage`. `Ok((None, _))` when the object does not exist.
    ///
    /// The lookup happens when this is called, not when the future is first polled: a read it
    /// starts is in flight from then on, so a caller that spawns the wait (read-ahead) leaves
    /// no moment in which the object is neither cached nor being read (and a second request
    /// would start its read-ahead again).
    ///
    /// Errors: the object-store read failed (every waiter of that read gets the error; the next
    /// lookup tries again).
    pub fn get(
        self: &Arc<Self>,
        storage: &Storage,
        key: &str,
    ) -> impl std::future::Future<Output = Result<(Option<Object>, Lookup), StorageError>> + Send + 'static
    {
        // Either the cached object, or the read to wait for and how it was found.
        let (fetch, lookup) = {
            let mut g = self.lock();
            if let Some(obj) = g.lru.get(key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let obj = obj.clone();
                return futures::future::Either::Left(std::future::ready(Ok((
                    Some(obj),
                    Lookup::Hit,
                ))));
            } else if let Some(f) = g.inflight.get(key) {
                self.joined.fetch_add(1, Ordering::Relaxed);
                (f.clone(), Lookup::Joined)
            } else {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let f = self.start_read(storage, key);
                g.inflight.insert(key.to_string(), f.clone());
                (f, Lookup::Miss)
            }
        };
        futures::future::Either::Right(async move {
            match fetch.await {
                Ok(obj) => Ok((obj, lookup)),
                Err(e) => Err(match &*e {
                    StorageError::NotFound(k) => StorageError::NotFound(k.clone()),
                    other => StorageError::Backend(other.to_string()),
                }),
            }
        })
    }

    /// Spawn the one read of `key`; it stores the result and clears the in-flight entry in one
    /// critical section, so a lookup sees either the read in flight or its result.
    fn start_read(self: &Arc<Self>, storage: &Storage, key: &str) -> Fetch {
        let cache = self.clone();
        let storage = storage.clone();
        let key = key.to_string();
        let task = self.tasks.spawn(async move {
            let res = storage.get_servable(&key).await;
            cache.complete(&key, &res);
            res.map_err(Arc::new)
        });
        async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Arc::new(StorageError::Backend(format!(
                    "cache read task failed: {e}"
                )))),
            }
        }
        .boxed()
        .shared()
    }

    fn complete(&self, key: &str, res: &Result<Option<Object>, StorageError>) {
        let mut g = self.lock();
        g.inflight.remove(key);
        let obj = match res {
            Ok(Some(obj)) if obj.bytes.len() <= self.budget_bytes => obj,
            _ => {
                self.departures.fetch_add(1, Ordering::Release);
                return;
            }
        };
        let size = obj.bytes.len();
        if let Some(old) = g.lru.put(key.to_string(), obj.clone()) {
            g.bytes -= old.bytes.len();
        }
        g.bytes += size;
        while g.bytes > self.budget_bytes {
            match g.lru.pop_lru() {
                Some((_, old)) => {
                    g.bytes -= old.bytes.len();
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    self.departures.fetch_add(1, Ordering::Release);
                }
                None => break,
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            joined: self.joined.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: g.bytes as u64,
            entries: g.lru.len() as u64,
        }
    }

    /// The byte budget.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn store() -> Storage {
        Storage::open(&crate::config::StorageLocation::Memory).unwrap()
    }

    #[tokio::test]
    async fn hit_after_miss_and_absent_objects_are_not_cached() {
        let s = store();
        s.put("a", Bytes::from_static(b"12345")).await.unwrap();
        let c = SegmentCache::new(100);
        let (o, l) = c.get(&s, "a").await.unwrap();
        assert_eq!((&o.unwrap().bytes[..], l), (&b"12345"[..], Lookup::Miss));
        let (_, l) = c.get(&s, "a").await.unwrap();
        assert_eq!(l, Lookup::Hit);
        let (o, l) = c.get(&s, "nope").await.unwrap();
        assert!(o.is_none() && l == Lookup::Miss);
        assert!(!c.is_cached_or_inflight("nope"));
    }

    /// A cached object is had without waiting, counted as a hit and made the most recent; a
    /// miss counts nothing and starts no read (the caller goes on to `get`).
    #[tokio::test]
    async fn get_cached_answers_hits_only_and_touches_recency() {
        let s = store();
        for k in ["a", "b", "c"] {
            s.put(k, Bytes::from(vec![7u8; 40])).await.unwrap();
        }
        let c = SegmentCache::new(100);
        assert!(c.get_cached("a").is_none());
        assert!(!c.is_cached_or_inflight("a"), "no read was started");
        assert_eq!((c.stats().hits, c.stats().misses), (0, 0));
        c.get(&s, "a").await.unwrap();
        c.get(&s, "b").await.unwrap();
        assert_eq!(c.get_cached("a").unwrap().bytes, vec![7u8; 40]);
        assert_eq!((c.stats().hits, c.stats().misses), (1, 2));
        c.get(&s, "c").await.unwrap(); // 120 > 100: the least recent goes, b (a was touched)
        assert!(c.contains("a") && !c.contains("b"));
    }

    /// A store with `a`, `b` and `c` of 40 bytes and `huge` of 500.
    async fn three_and_a_huge() -> Storage {
        let s = store();
        for k in ["a", "b", "c"] {
            s.put(k, Bytes::from(vec![0u8; 40])).await.unwrap();
        }
        s.put("huge", Bytes::from(vec![0u8; 500])).await.unwrap();
        s
    }

    /// [`three_and_a_huge`] and a cache of 100 bytes that has read `a`, `b`, then `a` again
    /// (`a` more recent than `b`; 80 bytes held).
    async fn a_b_then_a() -> (Storage, Arc<SegmentCache>) {
        let s = three_and_a_huge().await;
        let c = SegmentCache::new(100);
        for k in ["a", "b", "a"] {
            c.get(&s, k).await.unwrap();
        }
        (s, c)
    }

    #[tokio::test]
    async fn byte_budget_evicts_least_recently_used() {
        let (s, c) = a_b_then_a().await;
        c.get(&s, "c").await.unwrap(); // 120 > 100: b goes
        assert!(c.contains("a") && c.contains("c") && !c.contains("b"));
        assert_eq!(c.stats().bytes, 80);
        assert_eq!(c.stats().evictions, 1);
        let (o, _) = c.get(&s, "huge").await.unwrap();
        assert_eq!(o.unwrap().bytes.len(), 500, "served whole, not cached");
        assert!(!c.contains("huge"));
        assert!(c.stats().bytes <= 100);
    }

    /// Departures count what stops being cached or being read (an eviction; a read that found
    /// nothing or was too large to keep), and nothing else.
    #[tokio::test]
    async fn departures_count_what_left_the_cache_or_never_entered_it() {
        let (s, c) = a_b_then_a().await;
        assert!(c.get_cached("b").is_some());
        assert_eq!(c.departures(), 0, "reads that were kept, and hits");
        c.get(&s, "c").await.unwrap();
        assert_eq!(c.departures(), 1, "a evicted");
        c.get(&s, "huge").await.unwrap();
        assert_eq!(c.departures(), 2, "too large to keep");
        c.get(&s, "nope").await.unwrap();
        assert_eq!(
            c.departures(),
            3,
            "nothing there (a failed read ends the same way)"
        );
        assert!(!c.is_cached_or_inflight("nope"));
    }
}
