//! Test doubles for actors (tests only): a probe actor standing in for the next stage, so a
//! test asserts exactly which messages arrived (house style: quickwit's probe mailboxes), and
//! [`GatedStore`], an object store whose reads wait until the test lets them through.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// Forwards every message it gets to a channel.
pub struct Probe<M>(std::marker::PhantomData<M>);

impl<M: ractor::Message + Sync> Actor for Probe<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;
    async fn pre_start(
        &self,
        _: ActorRef<M>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }
    async fn handle(
        &self,
        _: ActorRef<M>,
        msg: M,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}

/// A probe actor and the channel its messages arrive on.
pub async fn probe<M: ractor::Message + Sync>() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (a, _) = Actor::spawn(None, Probe::<M>(std::marker::PhantomData), tx)
        .await
        .unwrap();
    (a, rx)
}

/// The next message a probe got; panics naming `what` after 10 s.
pub async fn next<M>(rx: &mut mpsc::UnboundedReceiver<M>, what: &str) -> M {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        .expect("probe alive")
}

/// An in-memory object store whose reads (`get`) of chosen keys wait until the test releases
/// them: whatever reads such a key (a worker fetching a task's source) stays busy for exactly
/// as long as the test wants, with no sleeps and no ffmpeg. Everything else is `InMemory`'s.
#[derive(Debug)]
pub struct GatedStore {
    inner: InMemory,
    /// Keys whose reads wait (exact object paths, as in `storage::keys`).
    held: tokio::sync::watch::Sender<HashSet<String>>,
}

impl std::fmt::Display for GatedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatedStore")
    }
}

impl GatedStore {
    /// An empty store holding no key.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: InMemory::new(),
            held: tokio::sync::watch::channel(HashSet::new()).0,
        })
    }

    /// Hold reads of `key` (started now or later) until [`GatedStore::release`].
    pub fn hold(&self, key: &str) {
        self.held.send_modify(|h| {
            h.insert(key.to_string());
        });
    }

    /// Let reads of `key` through, the waiting ones and any later one.
    pub fn release(&self, key: &str) {
        self.held.send_modify(|h| {
            h.remove(key);
        });
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
        let _ = self
            .held
            .subscribe()
            .wait_for(|held| !held.contains(&key))
            .await;
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
