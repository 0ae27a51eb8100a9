//! `UploadActor`: one per resumable (tus) upload in progress on this node. It owns the upload's
//! durable state (`uploads/{id}/info.json`) and serialises every change to it.
//!
//! Supervision: a child of the `UploadSupervisor` (see `upload_supervisor.rs`). It holds no state
//! that is not in the object store, so a crash loses nothing: the supervisor forgets it and the
//! next request for the upload starts a fresh actor from `info.json`.
//!
//! A `PATCH` is a lease: [`UploadMsg::Begin`] checks the offset and takes the upload (a second
//! `PATCH` while one runs gets [`UploadError::Locked`], so two writers can never corrupt the
//! offset); the HTTP layer streams the body into a part object outside the actor (the actor is
//! never blocked by a slow client); [`UploadMsg::End`] records the part and, when the last byte
//! arrived, completes the upload: the parts are joined and hashed, the declared SHA-256 (if any)
//! checked, and the bytes go through [`crate::ingest::Ingest::accept`] exactly as
//! `POST /upload`. A lease whose request vanished is given back by [`UploadMsg::Release`] (sent
//! from a drop guard).
//!
//! Policy for a `PATCH` cut mid-way: the bytes that fully arrived are kept as a part (tus 1.0.0
//! allows it), so `HEAD` tells the truth and the client resends only the rest. A chunk with an
//! `Upload-Checksum` is all or nothing: cut or mismatched, it is discarded.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use crate::actors::video_supervisor::VideoSupervisorMsg;
use crate::actors::Ctx;
use crate::ingest::{self, Staged};
use crate::model::now_ms;
use crate::storage::uploads::{Part, UploadInfo};
use crate::storage::{keys, StorageError};

/// Why an upload request was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such upload (never created, terminated or expired).
    #[error("{0}")]
    NotFound(String),
    /// `Upload-Offset` is not the stored offset (tus: `409 Conflict`).
    #[error("{0}")]
    Conflict(String),
    /// Another `PATCH` of this upload is running.
    #[error("{0}")]
    Locked(String),
    /// The first bytes are plainly not a video; the upload was terminated.
    #[error("{0}")]
    NotVideo(String),
    /// The whole file's SHA-256 is not the declared one; the upload was terminated.
    #[error("{0}")]
    ChecksumMismatch(String),
    /// The object store failed; the stored state is unchanged.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The node cannot take the request now (it is shutting down, or its memory for upload
    /// bodies stayed spent while the upload's parts were joined): retry shortly.
    #[error("{0}")]
    Unavailable(String),
}

/// What a join of an upload's parts into its source that found no room in the node's upload
/// memory ([`StorageError::Busy`]) tells the client: its bytes are all stored and stay so, and
/// a `HEAD` or the last `PATCH` sent again joins them (`finish_if_all_stored`), where the
/// `PUT`'s answer to `Busy` would say nothing of the body was stored.
fn join_waited(e: StorageError) -> UploadError {
    match e {
        StorageError::Busy(why) => UploadError::Unavailable(format!(
            "every byte of the upload is stored, but joining its parts waited for memory: {why}; \
             ask HEAD or send the last PATCH again shortly"
        )),
        other => other.into(),
    }
}

impl From<ingest::IngestError> for UploadError {
    fn from(e: ingest::IngestError) -> Self {
        match e {
            ingest::IngestError::Storage(s) => Self::Storage(s),
            ingest::IngestError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

/// The actor.
pub struct UploadActor;

/// Startup arguments.
pub struct UploadArgs {
    /// Node context (storage, events, limits).
    pub ctx: Ctx,
    /// Where a completed upload's video is started.
    pub videos: ActorRef<VideoSupervisorMsg>,
    /// The upload's state, as stored.
    pub info: UploadInfo,
}

/// State.
pub struct UploadState {
    ctx: Ctx,
    videos: ActorRef<VideoSupervisorMsg>,
    /// The stored state: always what `info.json` holds.
    info: UploadInfo,
    /// The token of the running `PATCH`, if any.
    busy: Option<u64>,
    /// The next lease token.
    next_token: u64,
    /// SHA-256 of the stored bytes so far, when this actor saw all of them arrive (`None`
    /// after a restart mid-upload: completion then reads the parts to hash them).
    hasher: Option<Sha256>,
}

/// Permission to append at `info.offset`, until `End` or `Release` with `token`.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Identifies this `PATCH`.
    pub token: u64,
    /// Names the part object this `PATCH` writes (16 random hex digits): two writers at one
    /// offset, on two nodes, never write the same object ([`crate::storage::keys::upload_part_of`]).
    pub writer: String,
    /// The state when the lease was taken.
    pub info: UploadInfo,
    /// The running SHA-256 of the stored bytes, when known: the PATCH feeds it every byte it
    /// stores and hands it back with `End`.
    pub hasher: Option<Sha256>,
}

/// What `Begin` gives.
#[derive(Debug, Clone)]
pub enum Begun {
    /// Append: stream the body, then `End`.
    Lease(Lease),
    /// The upload is already complete: nothing to do, whatever the offset.
    Complete(UploadInfo),
}

/// What a `PATCH` achieved, reported with `End`.
#[derive(Debug, Clone)]
pub enum PatchOutcome {
    /// A part was stored at `uploads/{id}/{part.offset:020}` (`part.len` may be 0: nothing
    /// stored). `sniffed`: the head of the file has now been classified as a possible video.
    Stored {
        /// The part.
        part: Part,
        /// The head was sniffed and may be a video.
        sniffed: bool,
        /// The lease's running SHA-256 fed with exactly the part's bytes (`None` if the lease
        /// had none).
        hasher: Option<Sha256>,
    },
    /// Nothing kept (a checksum mismatch, or a failure before any byte was stored).
    Nothing,
    /// The head is plainly not a video: terminate the upload.
    NotVideo(String),
}

/// Messages.
pub enum UploadMsg {
    /// The stored state (`HEAD`).
    Info(RpcReplyPort<UploadInfo>),
    /// Start a `PATCH` at `offset` (must equal the stored offset).
    Begin {
        /// The client's `Upload-Offset`.
        offset: u64,
        /// The lease, `Complete`, or `Conflict`/`Locked`.
        reply: RpcReplyPort<Result<Begun, UploadError>>,
    },
    /// Finish the `PATCH` holding `token`; completes the upload when the last byte arrived.
    End {
        /// The lease's token.
        token: u64,
        /// What was stored.
        outcome: PatchOutcome,
        /// The new state (with `video_id` once complete).
        reply: RpcReplyPort<Result<UploadInfo, UploadError>>,
    },
    /// Give back the lease `token` without a change (the request vanished).
    Release {
        /// The lease's token.
        token: u64,
    },
    /// Delete the upload and its parts and stop (tus "Termination"; also expiry).
    Terminate(RpcReplyPort<Result<(), UploadError>>),
}
impl ractor::Message for UploadMsg {}

impl UploadActor {
    fn expiry(ctx: &Ctx) -> i64 {
        (ctx.limits.upload_expiry_seconds as i64).saturating_mul(1000)
    }

    /// Stream every part of `info` in order into `sink` (bytes, bounded memory).
    async fn for_each_chunk(
        storage: &crate::storage::Storage,
        info: &UploadInfo,
        mut sink: impl FnMut(Bytes),
    ) -> Result<u64, UploadError> {
        let mut total = 0u64;
        for part in &info.parts {
            let mut stream = storage.read_stream(&part.key(&info.id)).await?;
            while let Some(chunk) = stream.next().await {
                let chunk: Bytes = chunk?;
                total += chunk.len() as u64;
                sink(chunk);
            }
        }
        Ok(total)
    }

    /// Check the declared digest, then ingest. The SHA-256 is usually known already (hashed as
    /// the PATCHes streamed in); after a restart it is computed by reading the parts once.
    /// Bytes reel already holds are never written again; a multi-part upload is joined straight
    /// into `sources/{video_id}` (one write, no copy).
    async fn complete(state: &mut UploadState) -> Result<(), UploadError> {
        let storage = state.ctx.storage.clone();
        let info = state.info.clone();
        let sha256 = match state.hasher.take() {
            Some(h) => hex::encode(h.finalize()),
            None => {
                let mut h = Sha256::new();
                let total = Self::for_each_chunk(&storage, &info, |c| h.update(&c)).await?;
                if total != info.length {
                    return Err(StorageError::Corrupt {
                        key: keys::upload_prefix(&info.id),
                        message: format!("parts hold {total} bytes, the upload {}", info.length),
                    }
                    .into());
                }
                hex::encode(h.finalize())
            }
        };
        if let Some(declared) = info.sha256.as_ref().filter(|d| **d != sha256) {
            let msg = format!(
                "the file's SHA-256 is {sha256}, not the declared {declared}; the upload was deleted and nothing became a video"
            );
            storage.delete_upload(&info.id).await?;
            return Err(UploadError::ChecksumMismatch(msg));
        }
        let accepted = match state.ctx.ingest().existing(&sha256).await? {
            Some(a) => a,
            None => {
                let id = crate::model::video_id(&sha256, &state.ctx.processing.profile);
                let source = keys::source(&id);
                // One part is already the whole file: ingest renames it.
                let staged = if info.parts.len() == 1 {
                    info.parts[0].key(&info.id)
                } else {
                    if !storage.exists(&source).await? {
                        let mut w = storage.writer(&source).await?;
                        let mut total = 0u64;
                        for part in &info.parts {
                            let mut stream = storage.read_stream(&part.key(&info.id)).await?;
                            while let Some(chunk) = stream.next().await {
                                let chunk: Bytes = chunk?;
                                total += chunk.len() as u64;
                                w.put(chunk).await.map_err(join_waited)?;
                            }
                        }
                        if total != info.length {
                            let _ = w.abort().await;
                            return Err(StorageError::Corrupt {
                                key: keys::upload_prefix(&info.id),
                                message: format!(
                                    "parts hold {total} bytes, the upload {}",
                                    info.length
                                ),
                            }
                            .into());
                        }
                        w.finish().await?;
                    }
                    source
                };
                state
                    .ctx
                    .ingest()
                    .accept(Staged {
                        key: staged,
                        sha256,
                        bytes: info.length,
                        filename: info.filename.clone(),
                    })
                    .await?
            }
        };
        if accepted.needs_processing {
            crate::actors::node::ensure_video(&state.ctx, &state.videos, &accepted.video_id).await;
        }
        // The outcome is stored before the parts go: a crash in between leaves parts to
        // expire, never an upload whose bytes are gone and whose video nobody knows.
        let parts = info.parts.clone();
        let mut info = info;
        info.video_id = Some(accepted.video_id);
        info.video_state = Some(accepted.state);
        info.duplicate = accepted.duplicate;
        info.parts.clear();
        info.expires_ms = now_ms() + Self::expiry(&state.ctx);
        storage.save_upload(&info).await?;
        for part in &parts {
            let _ = storage.delete(&part.key(&info.id)).await;
        }
        state.info = info;
        Ok(())
    }

    async fn end(
        myself: &ActorRef<UploadMsg>,
        state: &mut UploadState,
        outcome: PatchOutcome,
    ) -> Result<UploadInfo, UploadError> {
        match outcome {
            PatchOutcome::Nothing => Ok(state.info.clone()),
            PatchOutcome::NotVideo(reason) => {
                state.ctx.storage.delete_upload(&state.info.id).await?;
                myself.stop(Some("not a video".into()));
                Err(UploadError::NotVideo(reason))
            }
            PatchOutcome::Stored {
                part,
                sniffed,
                hasher,
            } => {
                let expires_ms = now_ms() + Self::expiry(&state.ctx);
                if part.len > 0 {
                    let storage = state.ctx.storage.clone();
                    let id = state.info.id.clone();
                    match storage
                        .append_upload_part(&id, part.clone(), sniffed, expires_ms)
                        .await?
                    {
                        Ok(info) => {
                            // The running hash covers the new part only if it covered every
                            // earlier one (this actor saw them all arrive).
                            let continued = info.parts.len() == state.info.parts.len() + 1;
                            state.hasher = if continued {
                                state.hasher.as_ref().and(hasher)
                            } else {
                                None
                            };
                            state.info = info;
                        }
                        Err(stored) => {
                            // The store let another writer's part in first: this one is not
                            // the upload's, and goes.
                            let _ = storage.delete(&part.key(&id)).await;
                            state.hasher = None;
                            let Some(stored) = stored else {
                                myself.stop(Some("terminated".into()));
                                return Err(UploadError::NotFound(
                                    "the upload was terminated while this PATCH ran".into(),
                                ));
                            };
                            let offset = stored.offset;
                            state.info = stored;
                            return Err(UploadError::Conflict(format!(
                                "another PATCH stored bytes at offset {} first; the upload now holds {offset} bytes: ask HEAD for the offset and resume there",
                                part.offset
                            )));
                        }
                    }
                }
                if state.info.offset == state.info.length {
                    match Self::complete(state).await {
                        Ok(()) => myself.stop(Some("complete".into())),
                        Err(e @ UploadError::ChecksumMismatch(_)) => {
                            myself.stop(Some("checksum mismatch".into()));
                            return Err(e);
                        }
                        // The state stays "all bytes stored": a retried PATCH (or HEAD after a
                        // restart followed by an empty PATCH) completes it.
                        Err(e) => return Err(e),
                    }
                }
                Ok(state.info.clone())
            }
        }
    }
}

impl UploadActor {
    /// All bytes are stored but the upload is not complete (the node stopped, or the store
    /// failed, between the last part and the video): complete it now, so a client that sees the
    /// full offset always finds its video.
    async fn finish_if_all_stored(myself: &ActorRef<UploadMsg>, state: &mut UploadState) {
        if state.info.offset != state.info.length || state.info.is_complete() {
            return;
        }
        match Self::complete(state).await {
            Ok(()) => {}
            Err(e @ UploadError::ChecksumMismatch(_)) => {
                tracing::warn!(upload_id = %state.info.id, "{e}");
                myself.stop(Some("checksum mismatch".into()));
            }
            Err(e) => {
                tracing::warn!(upload_id = %state.info.id, "cannot complete the upload yet: {e}")
            }
        }
    }
}

impl Actor for UploadActor {
    type Msg = UploadMsg;
    type State = UploadState;
    type Arguments = UploadArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<UploadMsg>,
        args: UploadArgs,
    ) -> Result<UploadState, ActorProcessingErr> {
        Ok(UploadState {
            ctx: args.ctx,
            videos: args.videos,
            info: args.info.clone(),
            busy: None,
            next_token: 1,
            hasher: (args.info.offset == 0).then(Sha256::new),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<UploadMsg>,
        state: &mut UploadState,
    ) -> Result<(), ActorProcessingErr> {
        Self::finish_if_all_stored(&myself, state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<UploadMsg>,
        msg: UploadMsg,
        state: &mut UploadState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UploadMsg::Info(reply) => {
                if state.busy.is_none() {
                    // Another node's actor may have appended or completed it meanwhile.
                    if let Ok(Some(stored)) = state.ctx.storage.load_upload(&state.info.id).await {
                        if stored != state.info {
                            state.info = stored;
                            state.hasher = None;
                        }
                    }
                    Self::finish_if_all_stored(&myself, state).await;
                }
                let _ = reply.send(state.info.clone());
            }
            UploadMsg::Begin { offset, reply } => {
                // Another node's actor may have appended (a ring change sends PATCHes of one
                // upload to two nodes): start from what the store holds. If the store cannot
                // be read, the swap at `End` still decides.
                if state.busy.is_none() {
                    match state.ctx.storage.load_upload(&state.info.id).await {
                        Ok(Some(stored)) if stored != state.info => {
                            state.info = stored;
                            state.hasher = None;
                        }
                        Ok(None) => {
                            let _ = reply.send(Err(UploadError::NotFound(
                                "no such upload (terminated or expired)".into(),
                            )));
                            myself.stop(Some("gone".into()));
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                let info = &state.info;
                // A complete upload has nothing left to append or to conflict with: any PATCH
                // learns the full offset (and the video) at once, without sending its body.
                // That lets a client whose final reply was lost, and which resends its last
                // chunk, finish cleanly.
                let answer = if info.is_complete() {
                    Ok(Begun::Complete(info.clone()))
                } else if offset != info.offset {
                    Err(UploadError::Conflict(format!(
                        "Upload-Offset is {offset} but the upload holds {} bytes: ask HEAD for the offset and resume there",
                        info.offset
                    )))
                } else if state.busy.is_some() {
                    Err(UploadError::Locked(
                        "another PATCH of this upload is running; retry when it ends".into(),
                    ))
                } else {
                    let token = state.next_token;
                    state.next_token += 1;
                    state.busy = Some(token);
                    Ok(Begun::Lease(Lease {
                        token,
                        writer: format!("{:016x}", rand::random::<u64>()),
                        info: info.clone(),
                        hasher: state.hasher.clone(),
                    }))
                };
                let _ = reply.send(answer);
            }
            UploadMsg::End {
                token,
                outcome,
                reply,
            } => {
                if state.busy != Some(token) {
                    let _ = reply.send(Err(UploadError::Conflict(
                        "this PATCH no longer holds the upload".into(),
                    )));
                    return Ok(());
                }
                state.busy = None;
                let r = Self::end(&myself, state, outcome).await;
                let _ = reply.send(r);
            }
            UploadMsg::Release { token } => {
                if state.busy == Some(token) {
                    state.busy = None;
                }
            }
            UploadMsg::Terminate(reply) => {
                let r = state.ctx.storage.delete_upload(&state.info.id).await;
                let ok = r.is_ok();
                let _ = reply.send(r.map_err(UploadError::from));
                if ok {
                    myself.stop(Some("terminated".into()));
                }
            }
        }
        Ok(())
    }
}

/// How long an `UploadActor` call may take before the HTTP layer gives up: completing an upload
/// reads every byte once (about 20 s per GiB on a slow disk), so this is generous.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::actors::NodeContext;
    use crate::config::StorageLocation;
    use crate::storage::events::EventLog;
    use crate::storage::Storage;

    #[test]
    fn a_join_that_waited_for_memory_says_the_bytes_are_kept_and_how_to_finish() {
        let e = join_waited(StorageError::Busy("256 MiB stayed in use for 30 s".into()));
        let UploadError::Unavailable(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.contains("every byte of the upload is stored"), "{m}");
        assert!(
            m.contains("256 MiB stayed in use") && m.contains("ask HEAD"),
            "{m}"
        );
        assert!(!m.contains("nothing"), "not the PUT's sentence: {m}");
        // Any other store failure stays the store's.
        let e = join_waited(StorageError::Backend("down".into()));
        assert!(
            matches!(e, UploadError::Storage(StorageError::Backend(_))),
            "{e:?}"
        );
    }

    /// Stands in for the VideoSupervisor: records the videos it is asked to ensure.
    struct Probe;
    impl Actor for Probe {
        type Msg = VideoSupervisorMsg;
        type State = Arc<Mutex<Vec<String>>>;
        type Arguments = Arc<Mutex<Vec<String>>>;
        async fn pre_start(
            &self,
            _: ActorRef<Self::Msg>,
            seen: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(seen)
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            msg: Self::Msg,
            seen: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                VideoSupervisorMsg::Ensure { video_id } => seen.lock().unwrap().push(video_id),
                VideoSupervisorMsg::Active(reply) => {
                    let _ = reply.send(seen.lock().unwrap().clone());
                }
                _ => {}
            }
            Ok(())
        }
    }

    async fn begin(a: &ActorRef<UploadMsg>, offset: u64) -> Result<Begun, UploadError> {
        ractor::call!(a, |reply| UploadMsg::Begin { offset, reply }).unwrap()
    }

    async fn end(
        a: &ActorRef<UploadMsg>,
        token: u64,
        outcome: PatchOutcome,
    ) -> Result<UploadInfo, UploadError> {
        ractor::call!(a, |reply| UploadMsg::End {
            token,
            outcome,
            reply
        })
        .unwrap()
    }

    fn lease(b: Result<Begun, UploadError>) -> Lease {
        match b {
            Ok(Begun::Lease(l)) => l,
            other => panic!("expected a lease: {other:?}"),
        }
    }

    fn token(b: Result<Begun, UploadError>) -> u64 {
        lease(b).token
    }

    /// Node `u1` on an in-memory store, with what its probe video supervisor will see.
    fn node_u1() -> (
        tempfile::TempDir,
        Storage,
        Arc<NodeContext>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageLocation::Memory).unwrap();
        let ctx = Arc::new(NodeContext {
            events: EventLog::open(&dir.path().join("e.sqlite"), "u1").unwrap(),
            ..NodeContext::for_tests("u1", storage.clone(), dir.path())
        });
        (dir, storage, ctx, Arc::new(Mutex::new(Vec::new())))
    }

    fn fed(l: &Lease, bytes: &[u8]) -> Option<Sha256> {
        let mut h = l.hasher.clone()?;
        h.update(bytes);
        Some(h)
    }

    #[tokio::test]
    async fn one_patch_at_a_time_and_the_last_part_makes_the_video_once() {
        let (_dir, storage, ctx, seen) = node_u1();
        let (probe, _) = Actor::spawn(None, Probe, seen.clone()).await.unwrap();
        let id = keys::new_upload_id("u1");
        let info = UploadInfo::for_tests(&id, 10);
        storage.save_upload(&info).await.unwrap();
        let (a, _) = Actor::spawn(
            None,
            UploadActor,
            UploadArgs {
                ctx,
                videos: probe.clone(),
                info,
            },
        )
        .await
        .unwrap();

        // One lease at a time; the wrong offset is a conflict.
        let t1 = token(begin(&a, 0).await);
        assert!(matches!(begin(&a, 0).await, Err(UploadError::Locked(_))));
        assert!(matches!(begin(&a, 3).await, Err(UploadError::Conflict(_))));
        // A released lease frees the upload and cannot end anything afterwards.
        a.cast(UploadMsg::Release { token: t1 }).unwrap();
        let l2 = lease(begin(&a, 0).await);
        let t2 = l2.token;
        assert!(matches!(
            end(&a, t1, PatchOutcome::Nothing).await,
            Err(UploadError::Conflict(_))
        ));
        let part = Part {
            offset: 0,
            len: 4,
            writer: Some(l2.writer.clone()),
        };
        storage
            .put(&part.key(&id), Bytes::from_static(b"0123"))
            .await
            .unwrap();
        let info = end(
            &a,
            t2,
            PatchOutcome::Stored {
                part,
                sniffed: true,
                hasher: fed(&l2, b"0123"),
            },
        )
        .await
        .unwrap();
        assert_eq!(info.offset, 4);
        assert_eq!(
            storage.load_upload(&id).await.unwrap().unwrap().offset,
            4,
            "durable"
        );

        // The last part completes: one video, its source the joined parts.
        let l3 = lease(begin(&a, 4).await);
        assert!(l3.hasher.is_some(), "the running hash carries over");
        let t3 = l3.token;
        let part = Part {
            offset: 4,
            len: 6,
            writer: Some(l3.writer.clone()),
        };
        storage
            .put(&part.key(&id), Bytes::from_static(b"456789"))
            .await
            .unwrap();
        let info = end(
            &a,
            t3,
            PatchOutcome::Stored {
                part,
                sniffed: true,
                hasher: fed(&l3, b"456789"),
            },
        )
        .await
        .unwrap();
        let video = info.video_id.clone().expect("complete");
        let source = storage.get(&keys::source(&video)).await.unwrap().unwrap();
        assert_eq!(&source.bytes[..], b"0123456789");
        assert_eq!(
            storage
                .load_record(&video)
                .await
                .unwrap()
                .unwrap()
                .source_bytes,
            10
        );
        let record = storage.load_record(&video).await.unwrap().unwrap();
        assert_eq!(
            record.source_sha256,
            hex::encode(Sha256::digest(b"0123456789")),
            "the running hash is the bytes' hash"
        );
        assert_eq!(
            storage.list(&keys::upload_prefix(&id)).await.unwrap().len(),
            1
        );
        // `call` on the probe is a barrier: the Ensure cast before it has arrived.
        let ensured = ractor::call!(probe, VideoSupervisorMsg::Active).unwrap();
        assert_eq!(ensured, vec![video]);
        probe.stop(None);
    }

    /// Two actors of one upload (two nodes during a ring change) both take a lease at offset 0
    /// and both store a part: the store lets exactly one extend the upload; the other's part
    /// is deleted and its PATCH gets 409, and the video is made of the winner's bytes only.
    #[tokio::test]
    async fn two_writers_at_one_offset_the_store_lets_one_in() {
        let (_dir, storage, ctx, seen) = node_u1();
        let (probe, _) = Actor::spawn(None, Probe, seen).await.unwrap();
        let id = keys::new_upload_id("u1");
        let info = UploadInfo::for_tests(&id, 4);
        storage.save_upload(&info).await.unwrap();
        let mut actors = Vec::new();
        for _ in 0..2 {
            let (a, _) = Actor::spawn(
                None,
                UploadActor,
                UploadArgs {
                    ctx: ctx.clone(),
                    videos: probe.clone(),
                    info: info.clone(),
                },
            )
            .await
            .unwrap();
            actors.push(a);
        }
        let leases = [
            lease(begin(&actors[0], 0).await),
            lease(begin(&actors[1], 0).await),
        ];
        let mut parts = Vec::new();
        for (l, bytes) in leases.iter().zip([b"XXXX", b"YYYY"]) {
            let part = Part {
                offset: 0,
                len: 4,
                writer: Some(l.writer.clone()),
            };
            assert_ne!(parts.last().map(|p: &Part| p.key(&id)), Some(part.key(&id)));
            storage
                .put(&part.key(&id), Bytes::from_static(bytes))
                .await
                .unwrap();
            parts.push(part);
        }
        let second = end(
            &actors[1],
            leases[1].token,
            PatchOutcome::Stored {
                part: parts[1].clone(),
                sniffed: true,
                hasher: fed(&leases[1], b"YYYY"),
            },
        )
        .await
        .unwrap();
        let first = end(
            &actors[0],
            leases[0].token,
            PatchOutcome::Stored {
                part: parts[0].clone(),
                sniffed: true,
                hasher: fed(&leases[0], b"XXXX"),
            },
        )
        .await;
        assert!(matches!(first, Err(UploadError::Conflict(_))), "{first:?}");
        assert!(
            storage.get(&parts[0].key(&id)).await.unwrap().is_none(),
            "the loser's part is gone"
        );
        let video = second.video_id.expect("complete");
        let source = storage.get(&keys::source(&video)).await.unwrap().unwrap();
        assert_eq!(&source.bytes[..], b"YYYY");
        let record = storage.load_record(&video).await.unwrap().unwrap();
        assert_eq!(record.source_sha256, hex::encode(Sha256::digest(b"YYYY")));
        // The loser's actor now tells the truth: the upload is complete.
        let again = begin(&actors[0], 0).await.unwrap();
        assert!(matches!(again, Begun::Complete(_)), "{again:?}");
        probe.stop(None);
    }
}
