//! Streaming writes of large objects (an upload's body, a tus upload's parts joined into its
//! source) in parts, under one memory budget for the whole node.
//!
//! A body arrives faster than, or as fast as, the store takes it; what is between the two is in
//! memory: the part being filled and the parts on their way to the store. Each writer once had
//! its own bound (8 MiB parts, 4 on their way) and nothing bounded their sum: 100 `PUT`s that
//! had each sent 7 MiB and then waited held 735 MiB of a node's memory, and a thousand would
//! have held 7 GiB, all of it bytes any client can send. nginx spools bodies to disk and keeps
//! 16 KiB of each in memory (`client_body_buffer_size`).
//!
//! So the bytes a writer holds, in the part it fills and in the parts on their way, are counted
//! against the node's [`WriteBudget`] (`limits.upload_buffer_mib`) as they arrive, and given
//! back once the store has their part. Room is taken for the bytes received, not for a whole
//! part ahead: a client that sends one byte holds one KiB, so holding the budget costs a client
//! the budget's size in bytes sent. A writer that finds the budget spent first sends the part
//! it is filling, short, where the store takes parts of any size (the local store, which writes
//! each at its offset at once), so that its room comes back as soon as that write ends; then it
//! waits, its client's bytes held back by TCP, for at most the budget's `wait`
//! (`limits.body_idle_seconds`, the time a body may stall anyway), and fails with
//! [`StorageError::Busy`] (`503` and `Retry-After` for the client, nothing of its body stored).
//!
//! Parts are [`LOCAL_PART_BYTES`] on the local store and [`REMOTE_PART_BYTES`] elsewhere (S3's
//! smallest part but the last is 5 MiB; there a waiting writer keeps its part, and room comes
//! back as other writers' parts arrive or as writers that waited too long give theirs up).
//!
//! Where the store takes short parts, a part is also sent once its first byte is
//! [`PART_AGE`] old, whether more bytes come ([`PartWriter::put`]) or the body has gone quiet
//! ([`next_within`]). Without that, slow clients held their room for as long as they kept
//! sending: 400 `PUT` bodies that each sent 1,000 bytes short of a MiB, then a byte every half
//! second (never silent long enough to be cut), kept a node's 256 MiB at 0 to 6 MiB free, so
//! every other upload had to fit through what was left, and clients that filled that too
//! would have kept them out. Now a client holds at most what it sent in the last second
//! (the same 400 left 255 MiB free), so keeping the budget spent costs sending its size every
//! second.
//!
//! Where parts must be whole (S3), an aged part cannot be sent short. There it goes to a
//! node-local [`Spool`] instead, as nginx writes request bodies to `client_body_temp_path`: an
//! unnamed file in the data directory (gone with the writer, or with the process), which takes
//! the rest of the part's bytes as they come; its memory room comes back at once. Once the
//! part is whole (or the body ends) it is read back, taking its room again for the time of
//! its write to the store. The spool's room on disk is bounded too (`limits.upload_spool_mib`,
//! taken a whole part at a time); a part that finds it spent stays in memory, as before. A
//! writer that finds the memory budget spent moves its part to the spool too, as the local
//! store's writer sends its part short, instead of waiting for room. On
//! SeaweedFS, 32 bodies that each sent 1,000 bytes short of 8 MiB and then trickled kept the
//! 256 MiB spent, and a `curl -T` beside them got `503` after 30 s; with the spool every upload
//! beside them was answered within a second.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::{MultipartUpload, PutPayload, PutPayloadMut};
use std::os::unix::fs::FileExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::StorageError;

/// Part size on the local store (bytes).
pub const LOCAL_PART_BYTES: usize = 1024 * 1024;

/// Part size on S3 and other remote stores (bytes): at least S3's 5 MiB.
pub const REMOTE_PART_BYTES: usize = 8 * 1024 * 1024;

/// Parts of one writer on their way to the store at most at once.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Longest a part is filled in memory before it leaves it: sent short where the store takes
/// short parts, else moved to the [`Spool`] (see the module's documentation). A body arriving
/// at 1 MB/s or more fills its 1 MiB local parts within it.
pub const PART_AGE: Duration = Duration::from_secs(1);

/// The budget's unit (bytes): permits are KiB, so a budget of terabytes still counts in `u32`.
const UNIT: usize = 1024;

/// The memory all of a node's writers may hold at once (see the module's documentation).
#[derive(Debug, Clone)]
pub struct WriteBudget {
    permits: Arc<Semaphore>,
    /// The budget, KiB.
    total: u32,
    /// Longest wait for room before a write fails as [`StorageError::Busy`].
    wait: Duration,
}

impl WriteBudget {
    /// A budget of `bytes` (at least one KiB, at most 4 TiB), writers waiting at most `wait`
    /// for room.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let total = (bytes / UNIT as u64).clamp(1, u64::from(u32::MAX)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            wait,
        }
    }

    /// Bytes of the budget free now.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT as u64
    }

    /// `n` units of room at once, if free now.
    fn try_take(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_many_owned(n).ok()
    }

    /// `n` units of room (at most the whole budget): waits at most `wait`.
    /// Errors: [`StorageError::Busy`].
    async fn take(&self, n: u32) -> Result<OwnedSemaphorePermit, StorageError> {
        let n = n.min(self.total);
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            // The semaphore is never closed; were it, no room would ever come.
            Ok(Err(_)) | Err(_) => Err(StorageError::Busy(format!(
                "the {} MiB the node keeps for upload bodies on their way to the store \
                 (limits.upload_buffer_mib) stayed in use for {} s",
                self.total / 1024,
                self.wait.as_secs()
            ))),
        }
    }
}

/// Where writers' aged parts wait on disk where parts must be whole (see the module's
/// documentation): a directory, and the room on disk that all such parts share.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: Arc<Path>,
    room: WriteBudget,
}

impl Spool {
    /// Parts kept in unnamed files in `dir`, at most `bytes` of them at once (a whole part's
    /// room is taken for each; at most 4 TiB).
    pub fn new(dir: impl Into<PathBuf>, bytes: u64) -> Self {
        Self {
            dir: Arc::from(dir.into()),
            room: WriteBudget::new(bytes, Duration::ZERO),
        }
    }

    /// Bytes of the spool's room free now.
    pub fn available(&self) -> u64 {
        self.room.available()
    }
}

/// A part waiting in the spool: its file, the bytes in it, and its room on disk. The file is
/// written and read at offsets on the blocking pool, straight from and into the bytes given:
/// tokio's `File` would keep a buffer of up to 2 MiB of its own for each, outside the budget.
struct Spilled {
    file: Arc<std::fs::File>,
    len: usize,
    _room: OwnedSemaphorePermit,
}

/// A streaming write of one object in parts ([`super::Storage::writer`]); nothing is visible
/// at the key until [`PartWriter::finish`]. Dropped unfinished, its parts on their way are
/// cancelled and their room given back; the local store removes its partial file, while S3
/// keeps an incomplete multipart upload until the bucket's lifecycle rule ends it
/// (`docs/uploads.md`). [`PartWriter::abort`] removes it at once on every store.
pub struct PartWriter {
    upload: Box<dyn MultipartUpload>,
    part_bytes: usize,
    /// Whether the store takes a part shorter than `part_bytes` before the last.
    short_parts: bool,
    budget: WriteBudget,
    /// The part being filled, and the room its bytes hold (rounded up to a KiB).
    part: PutPayloadMut,
    room: Option<OwnedSemaphorePermit>,
    /// When the part's first byte came (none while it is empty).
    filled_since: Option<Instant>,
    /// Where an aged part may wait on disk (where parts must be whole), and the part waiting
    /// there: while it is, the part's bytes go to its file, and `part` is empty.
    spool: Option<Spool>,
    spilled: Option<Spilled>,
    /// Parts on their way to the store, each holding its room until it arrives.
    in_flight: JoinSet<Result<(), object_store::Error>>,
}

impl PartWriter {
    /// A writer of `upload` in parts of `part_bytes`, sending a part short when the budget is
    /// spent or the part aged if `short_parts`, its room from `budget`; else its aged parts
    /// kept in `spool`, if any.
    pub(super) fn new(
        upload: Box<dyn MultipartUpload>,
        part_bytes: usize,
        short_parts: bool,
        budget: WriteBudget,
        spool: Option<Spool>,
    ) -> Self {
        Self {
            upload,
            part_bytes,
            short_parts,
            budget,
            part: PutPayloadMut::new(),
            room: None,
            filled_since: None,
            spool,
            spilled: None,
            in_flight: JoinSet::new(),
        }
    }

    /// Append `chunk` (not copied); full parts go to the store as they fill, and parts
    /// [`PART_AGE`] old as they are where the store takes short parts, or to the spool.
    ///
    /// Errors: [`StorageError::Busy`] when no room came in the budget's wait, the spool's
    /// file could not be written, or the store's error for an earlier part.
    pub async fn put(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let free = self.part_bytes - self.filled();
            let piece = chunk.split_to(free.min(chunk.len()));
            if self.spilled.is_none() {
                // Room in memory, or (where the budget is spent) the part moves to the spool.
                self.make_room(piece.len()).await?;
            }
            if let Some(s) = &mut self.spilled {
                let (file, at) = (s.file.clone(), s.len as u64);
                let n = piece.len();
                blocking(move || file.write_all_at(&piece, at)).await?;
                s.len += n;
            } else {
                self.part.push(piece);
            }
            let now = Instant::now();
            let since = *self.filled_since.get_or_insert(now);
            if self.filled() >= self.part_bytes {
                self.send_part().await?;
            } else if now >= since + PART_AGE {
                self.part_aged().await?;
            }
        }
        Ok(())
    }

    /// Bytes of the part being filled, in memory or in the spool.
    fn filled(&self) -> usize {
        self.spilled
            .as_ref()
            .map_or(self.part.content_length(), |s| s.len)
    }

    /// When the part being filled is due to leave memory as it is (sent short, or spooled):
    /// `None` when it is empty, already spooled, or has nowhere to go.
    fn part_due(&self) -> Option<Instant> {
        let movable = self.short_parts || (self.spool.is_some() && self.spilled.is_none());
        self.filled_since.filter(|_| movable).map(|t| t + PART_AGE)
    }

    /// The part being filled is [`PART_AGE`] old: send it short where the store takes that,
    /// else move it to the spool (if there is room there; else it stays in memory).
    async fn part_aged(&mut self) -> Result<(), StorageError> {
        if self.short_parts {
            return self.send_part().await;
        }
        self.spill().await.map(|_| ())
    }

    /// Move the part being filled (empty or not) to the spool, where there is one with room
    /// for a part: `true` when it is there (or was already). A disk error leaves it in memory.
    async fn spill(&mut self) -> Result<bool, StorageError> {
        if self.spilled.is_some() {
            return Ok(true);
        }
        let Some(spool) = &self.spool else {
            return Ok(false);
        };
        let Some(room) = spool.room.try_take(units(self.part_bytes) as u32) else {
            return Ok(false);
        };
        let dir = spool.dir.clone();
        let part = std::mem::take(&mut self.part).freeze();
        let payload = part.clone();
        let written = blocking(move || {
            let file = tempfile::tempfile_in(&*dir)?;
            let mut at = 0u64;
            for b in &payload {
                file.write_all_at(b, at)?;
                at += b.len() as u64;
            }
            Ok(file)
        })
        .await;
        let file = match written {
            Ok(f) => Arc::new(f),
            Err(e) => {
                // The part stays in memory, as where there is no spool, and this writer tries
                // the spool no more (one warning, not one a chunk).
                tracing::warn!("{e}; the part stays in memory");
                self.spool = None;
                for b in part {
                    self.part.push(b);
                }
                return Ok(false);
            }
        };
        self.spilled = Some(Spilled {
            file,
            len: part.content_length(),
            _room: room,
        });
        self.room = None;
        Ok(true)
    }

    /// Make the part's room cover `more` bytes beyond those it holds: at once if the budget
    /// has it; else, where the store takes short parts, after sending the part as it is (its
    /// room then comes back when the write ends); then waiting for it. Where parts must be
    /// whole and the spool has room, the part moves there instead of waiting, and the `more`
    /// bytes follow it (`spilled` is then set, and no room is taken).
    async fn make_room(&mut self, more: usize) -> Result<(), StorageError> {
        let held = self.room.as_ref().map_or(0, |r| r.num_permits());
        let mut need = units(self.part.content_length() + more).saturating_sub(held);
        if need == 0 {
            return Ok(());
        }
        let got = match self.budget.try_take(need as u32) {
            Some(p) => p,
            None => {
                if self.short_parts && self.part.content_length() > 0 {
                    self.send_part().await?;
                    need = units(more);
                } else if !self.short_parts && self.spill().await? {
                    return Ok(());
                }
                self.budget.take(need as u32).await?
            }
        };
        match &mut self.room {
            Some(r) => r.merge(got),
            None => self.room = Some(got),
        }
        Ok(())
    }

    /// Send the part being filled, once fewer than [`PARTS_IN_FLIGHT`] are on their way.
    async fn send_part(&mut self) -> Result<(), StorageError> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.one_arrived().await?;
        }
        let (part, room) = match &self.spilled {
            None => (std::mem::take(&mut self.part).freeze(), self.room.take()),
            Some(s) => {
                // Read back from the spool, its room in memory taken first.
                let room = self.budget.take(units(s.len) as u32).await?;
                let s = self.spilled.take().expect("spilled");
                let bytes = blocking(move || {
                    let mut bytes = vec![0; s.len];
                    s.file.read_exact_at(&mut bytes, 0)?;
                    Ok(bytes)
                })
                .await?;
                (PutPayload::from(Bytes::from(bytes)), Some(room))
            }
        };
        self.filled_since = None;
        let sent = self.upload.put_part(part);
        self.in_flight.spawn(async move {
            let r = sent.await;
            drop(room);
            r
        });
        Ok(())
    }

    /// Wait for one part on its way. Errors: the store's for it.
    async fn one_arrived(&mut self) -> Result<(), StorageError> {
        match self.in_flight.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.into()),
            Some(Err(e)) => Err(StorageError::Backend(format!("a part's write failed: {e}"))),
        }
    }

    /// Send what is left, wait for every part, and make the object visible at its key.
    ///
    /// Errors: the store's.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        if self.filled() > 0 {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.one_arrived().await?;
        }
        self.room = None;
        self.upload.complete().await?;
        Ok(())
    }

    /// Drop the parts and the store's partial upload.
    ///
    /// Errors: the store's, removing the partial upload.
    pub async fn abort(mut self) -> Result<(), StorageError> {
        self.in_flight.shutdown().await;
        self.upload.abort().await?;
        Ok(())
    }
}

/// Wait for `next` (the body's next chunk) for at most `idle`: `None` when it did not come.
/// Meanwhile `writer`'s part leaves memory once it is [`PART_AGE`] old, sent short where the
/// store takes that, else to the spool, so a body that has gone quiet gives its room back
/// (see the module's documentation).
///
/// Errors: the store's, for this or an earlier part, or the spool's.
pub async fn next_within<F: Future>(
    writer: Option<&mut PartWriter>,
    next: F,
    idle: Duration,
) -> Result<Option<F::Output>, StorageError> {
    let deadline = Instant::now() + idle;
    let mut next = std::pin::pin!(next);
    if let Some(w) = writer {
        if let Some(due) = w.part_due().filter(|&d| d < deadline) {
            if let Ok(out) = tokio::time::timeout_at(due, next.as_mut()).await {
                return Ok(Some(out));
            }
            w.part_aged().await?;
        }
    }
    Ok(tokio::time::timeout_at(deadline, next).await.ok())
}

/// Run `f` (the spool's file work) on the blocking pool. Errors: its I/O error, or the task's
/// failure, as the store's.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)
        .flatten()
        .map_err(|e| StorageError::Backend(format!("upload spool: {e}")))
}

/// Units of room that `bytes` take.
fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use object_store::memory::InMemory;
    use tempfile::TempDir;

    /// A store in memory whose writers fill parts of `part` bytes (sent short when the budget
    /// is spent if `short`) from a budget of `budget` bytes, waiting at most 5 s for room.
    fn store(part: usize, short: bool, budget: u64) -> (Storage, WriteBudget) {
        let b = WriteBudget::new(budget, Duration::from_secs(5));
        let s = Storage::from_store(Arc::new(InMemory::new()))
            .with_write_budget(b.clone())
            .with_parts(part, short);
        (s, b)
    }

    /// The object at `key`, whole.
    async fn read(s: &Storage, key: &str) -> Option<Bytes> {
        s.get(key).await.unwrap().map(|o| o.bytes)
    }

    fn bytes(n: usize, of: u8) -> Bytes {
        Bytes::from(vec![of; n])
    }

    /// `n` bytes of each `(n, of)` in turn: what a writer given those chunks must store.
    fn runs(runs: &[(usize, u8)]) -> Vec<u8> {
        runs.iter().flat_map(|&(n, of)| vec![of; n]).collect()
    }

    /// Wait 3 s for a body that sends nothing more to `w`: the wait lasts that long and ends
    /// with nothing.
    async fn quiet(w: &mut PartWriter) {
        let started = Instant::now();
        let got = next_within(
            Some(w),
            std::future::pending::<()>(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert!(got.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_past_the_budget_waits_then_is_told_busy_and_room_comes_back() {
        let (s, budget) = store(4096, false, 8192);
        let mut a = s.writer("a").await.unwrap();
        let mut b = s.writer("b").await.unwrap();
        a.put(bytes(4000, b'a')).await.unwrap();
        b.put(bytes(4000, b'b')).await.unwrap();
        assert_eq!(budget.available(), 0, "the bytes held take the room");
        let mut c = s.writer("c").await.unwrap();
        let started = tokio::time::Instant::now();
        let e = c.put(bytes(1, b'c')).await.unwrap_err();
        assert!(matches!(e, StorageError::Busy(_)), "{e}");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "it waited the budget's wait"
        );
        a.finish().await.unwrap();
        assert_eq!(
            budget.available(),
            4096,
            "a finished write gives its room back"
        );
        c.put(bytes(1, b'c')).await.unwrap();
        c.finish().await.unwrap();
        b.finish().await.unwrap();
        assert_eq!(budget.available(), 8192);
        assert_eq!(read(&s, "a").await.unwrap(), bytes(4000, b'a'));
        assert_eq!(read(&s, "c").await.unwrap(), bytes(1, b'c'));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_a_byte_holds_a_kib_not_a_part() {
        // 8 MiB parts, a budget of 16 KiB: ten writers of one byte each all get in.
        let (s, budget) = store(REMOTE_PART_BYTES, false, 16 * 1024);
        let mut writers = Vec::new();
        for i in 0..10 {
            let mut w = s.writer(&format!("w{i}")).await.unwrap();
            w.put(bytes(1, b'x')).await.unwrap();
            writers.push(w);
        }
        assert_eq!(budget.available(), 6 * 1024);
        for w in writers {
            w.finish().await.unwrap();
        }
        assert_eq!(budget.available(), 16 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn where_short_parts_are_taken_a_writer_sends_its_part_short_instead_of_waiting() {
        // Parts of 8 KiB, room for 4 KiB.
        let (s, budget) = store(8192, true, 4096);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'1')).await.unwrap();
        // 2,000 more do not fit beside the 3,000 held: the 3,000 go to the store as a short
        // part, and their room comes back for the 2,000, with no wait.
        let started = tokio::time::Instant::now();
        a.put(bytes(2000, b'2')).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        a.finish().await.unwrap();
        assert_eq!(
            read(&s, "a").await.unwrap(),
            runs(&[(3000, b'1'), (2000, b'2')])
        );
        assert_eq!(budget.available(), 4096);
        // Where parts must be whole (S3), the same writer waits for room it holds itself: so
        // a node on S3 needs a budget of at least two parts (`Config::validate`).
        let (s, _) = store(8192, false, 4096);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'1')).await.unwrap();
        let e = a.put(bytes(2000, b'2')).await.unwrap_err();
        assert!(matches!(e, StorageError::Busy(_)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn where_short_parts_are_taken_a_part_a_second_old_goes_as_it_is_and_gives_its_room_back()
    {
        // Parts of 8 KiB, room for 8 KiB.
        let (s, budget) = store(8192, true, 8192);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'1')).await.unwrap();
        assert_eq!(budget.available(), 8192 - 3 * 1024);
        // The body goes quiet: the wait for it lasts its whole `idle`, and meanwhile, a second
        // after the part's first byte, the part goes to the store as it is.
        quiet(&mut a).await;
        assert_eq!(a.part.content_length(), 0, "the part went");
        assert_eq!(budget.available(), 8192, "its room came back");
        // A body that trickles (1,000 bytes every half second, never quiet long enough to be
        // cut) holds at most a second of its bytes, not a whole part.
        for i in 0..8u8 {
            tokio::time::advance(Duration::from_millis(500)).await;
            a.put(bytes(1000, b'a' + i)).await.unwrap();
            assert!(
                a.part.content_length() <= 2000,
                "held {} bytes",
                a.part.content_length()
            );
        }
        // A chunk that comes is handed on as it is.
        let got = next_within(Some(&mut a), std::future::ready(7), Duration::from_secs(3)).await;
        assert_eq!(got.unwrap(), Some(7));
        a.finish().await.unwrap();
        let mut want = vec![(3000, b'1')];
        want.extend((0..8u8).map(|i| (1000, b'a' + i)));
        assert_eq!(read(&s, "a").await.unwrap(), runs(&want));
        assert_eq!(budget.available(), 8192);

        // Where parts must be whole (S3), a quiet body keeps its part and its room.
        let (s, budget) = store(8192, false, 8192);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'1')).await.unwrap();
        quiet(&mut a).await;
        assert_eq!(a.part.content_length(), 3000);
        assert_eq!(budget.available(), 8192 - 3 * 1024);
    }

    /// As [`store`], whole parts only, with a spool of `spool` bytes in a new directory.
    fn spooled(part: usize, budget: u64, spool: u64) -> (Storage, WriteBudget, Spool, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let sp = Spool::new(dir.path(), spool);
        let (s, b) = store(part, false, budget);
        (s.with_spool(sp.clone()), b, sp, dir)
    }

    #[tokio::test(start_paused = true)]
    async fn where_parts_must_be_whole_a_slow_part_waits_on_disk_and_gives_its_memory_back() {
        // Parts of 8 KiB, room for two in memory and four on disk.
        let (s, budget, spool, dir) = spooled(8192, 16384, 32768);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'1')).await.unwrap();
        assert_eq!(budget.available(), 16384 - 3 * 1024);
        // The body goes quiet: a second after the part's first byte, the part moves to disk.
        quiet(&mut a).await;
        assert_eq!(budget.available(), 16384, "its memory came back");
        assert_eq!(spool.available(), 32768 - 8192, "a part's room on disk");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the file has no name"
        );
        // The rest of the part goes to the file, holding no memory; once whole, the part is
        // read back and sent, and what follows starts a new part in memory.
        a.put(bytes(4000, b'2')).await.unwrap();
        assert_eq!(budget.available(), 16384);
        a.put(bytes(3000, b'3')).await.unwrap();
        assert_eq!(spool.available(), 32768, "the spooled part went");
        assert_eq!(a.part.content_length(), 3000 + 4000 + 3000 - 8192);
        // A part that moved to disk and did not fill is read back at the end.
        tokio::time::advance(Duration::from_secs(2)).await;
        a.put(bytes(10, b'4')).await.unwrap();
        assert_eq!(spool.available(), 32768 - 8192, "the second part moved");
        a.finish().await.unwrap();
        let want = runs(&[(3000, b'1'), (4000, b'2'), (3000, b'3'), (10, b'4')]);
        assert_eq!(read(&s, "a").await.unwrap(), want);
        assert_eq!(budget.available(), 16384);
        assert_eq!(spool.available(), 32768);

        // An aborted write gives its room on disk back too.
        let mut b = s.writer("b").await.unwrap();
        b.put(bytes(100, b'b')).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        b.put(bytes(100, b'b')).await.unwrap();
        assert_eq!(spool.available(), 32768 - 8192);
        b.abort().await.unwrap();
        assert_eq!(spool.available(), 32768);
        assert!(read(&s, "b").await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn where_parts_must_be_whole_a_writer_that_finds_no_memory_goes_to_the_spool() {
        // Parts of 8 KiB, room for one in memory.
        let (s, budget, spool, _dir) = spooled(8192, 8192, 32768);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'a')).await.unwrap();
        // 6,000 bytes do not fit beside a's 3,000: b's part goes to the spool at once, where
        // without one it would wait (`where_short_parts_are_taken_...` above).
        let mut b = s.writer("b").await.unwrap();
        let started = Instant::now();
        b.put(bytes(6000, b'b')).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait");
        assert_eq!(budget.available(), 8192 - 3 * 1024, "b holds no memory");
        assert_eq!(spool.available(), 32768 - 8192);
        // Its part is read back when it is sent, once a's room has come back.
        a.finish().await.unwrap();
        b.finish().await.unwrap();
        assert_eq!(read(&s, "a").await.unwrap(), bytes(3000, b'a'));
        assert_eq!(read(&s, "b").await.unwrap(), bytes(6000, b'b'));
        assert_eq!(budget.available(), 8192);
        assert_eq!(spool.available(), 32768);
    }

    /// A slow part of a writer of `s` whose spool cannot take it: it stays in memory (its room
    /// held in `budget`, of 16 KiB), `check` holds for the writer after the quiet wait, and the
    /// object is stored whole.
    async fn stays_in_memory(s: Storage, budget: WriteBudget, check: impl FnOnce(&PartWriter)) {
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(3000, b'1')).await.unwrap();
        quiet(&mut a).await;
        assert_eq!(budget.available(), 16384 - 3 * 1024, "it keeps its memory");
        check(&a);
        a.put(bytes(1000, b'2')).await.unwrap();
        a.finish().await.unwrap();
        assert_eq!(
            read(&s, "a").await.unwrap(),
            runs(&[(3000, b'1'), (1000, b'2')])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_part_whose_spool_cannot_be_written_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("no-such-directory"), 32768);
        let (s, budget) = store(8192, false, 16384);
        stays_in_memory(s.with_spool(spool.clone()), budget, |a| {
            assert_eq!(spool.available(), 32768, "no room taken on disk");
            assert!(a.spool.is_none(), "it tries the spool no more");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_part_that_finds_the_spool_full_stays_in_memory() {
        // Room on disk for less than a part.
        let (s, budget, spool, _dir) = spooled(8192, 16384, 4096);
        stays_in_memory(s, budget, |_| assert_eq!(spool.available(), 4096)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_goes_on_when_another_finishes() {
        let (s, budget) = store(4096, false, 4096);
        let mut a = s.writer("a").await.unwrap();
        a.put(bytes(4000, b'a')).await.unwrap();
        let s2 = s.clone();
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asks = asked.clone();
        let waiting = tokio::spawn(async move {
            let mut b = s2.writer("b").await.unwrap();
            // Set in the same poll that asks for room: once seen, the writer is waiting.
            asks.store(true, std::sync::atomic::Ordering::Relaxed);
            b.put(bytes(10, b'b')).await?;
            b.finish().await
        });
        for _ in 0..1000 {
            if asked.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(asked.load(std::sync::atomic::Ordering::Relaxed));
        // Most of its wait goes by; then the first write finishes and gives its room.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!waiting.is_finished(), "it waits for room");
        a.finish().await.unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(read(&s, "b").await.unwrap(), bytes(10, b'b'));
        assert_eq!(budget.available(), 4096);
    }

    #[tokio::test]
    async fn a_body_of_many_parts_arrives_whole_and_in_order_within_the_budget() {
        for short in [false, true] {
            // Room for fewer parts than PARTS_IN_FLIGHT + 1.
            let (s, budget) = store(4096, short, 3 * 4096);
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let mut w = s.writer("big").await.unwrap();
            for chunk in data.chunks(3001) {
                w.put(Bytes::copy_from_slice(chunk)).await.unwrap();
            }
            w.finish().await.unwrap();
            assert_eq!(read(&s, "big").await.unwrap(), data, "short parts: {short}");
            assert_eq!(budget.available(), 3 * 4096, "all room given back");
        }
    }

    #[tokio::test]
    async fn an_aborted_write_leaves_nothing_and_gives_its_room_back() {
        let (s, budget) = store(4096, false, 16384);
        let mut w = s.writer("gone").await.unwrap();
        w.put(bytes(6000, 1)).await.unwrap();
        w.abort().await.unwrap();
        assert!(read(&s, "gone").await.is_none());
        assert_eq!(budget.available(), 16384);
    }
}
