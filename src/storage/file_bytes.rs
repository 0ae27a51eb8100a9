//! Bytes that remember the file they were read from, so that a connection can send the file's
//! pages (`sendfile(2)`) instead of copying the bytes from memory (issue 11, P1).
//!
//! A segment read from the local store is read into memory as any object is, and its buffer
//! serves every purpose a [`Bytes`] does (ranges, playlists, tests). In addition, for as long
//! as the buffer lives, its address range is listed here with the open file it was read from.
//! The HTTP connection's writer (`http::zerocopy`) asks [`source_of`] about each buffer it is
//! given: a buffer inside a listed one is sent as the same range of the file, which hands the
//! kernel's page-cache pages to the socket; nginx serves files this way, and the copy from user
//! memory it saves was about a quarter of a cache-hit request's CPU.
//!
//! Correctness rests on one invariant: **a listed file's bytes equal the buffer's.** It holds
//! because
//! - the buffer is the whole file, read through the handle that is kept (a read that does not
//!   return exactly the object's size is not listed);
//! - the handle keeps the inode it opened: a later write of the same key (object_store's
//!   `LocalFileSystem` writes a new file and renames it over the old) or a delete (a sweep)
//!   leaves the listed inode as it was;
//! - nothing in reel writes a stored object in place, and objects of ready videos are
//!   immutable anyway.
//!
//! An entry is removed when the buffer is freed (its owner's `Drop`, before the memory is
//! returned), so an address is never looked up after the memory could hold something else.
//! Only buffers of at least [`MIN_LISTED_BYTES`] are listed: smaller ones gain nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Arc, LazyLock, RwLock};

use bytes::Bytes;

/// Buffers smaller than this (bytes) are not listed: for playlists and init segments the copy
/// costs less than the lookup and the extra system call.
pub const MIN_LISTED_BYTES: usize = 64 * 1024;

/// Files listed at most at once. Each listed buffer keeps its file open, and descriptors are
/// what bounds a node's connections: this stays within the 512 the node keeps for its own files
/// (`http::listener`), beside the store's reads, the logs and the cluster's links. Past it, a
/// buffer is returned unlisted and goes out from memory: correct, one copy slower.
pub const MAX_LISTED_FILES: usize = 256;

/// Listed buffers by start address: (length in bytes, the file).
type Listing = BTreeMap<usize, (usize, Arc<File>)>;

static LISTED: LazyLock<RwLock<Listing>> = LazyLock::new(|| RwLock::new(BTreeMap::new()));

fn listing() -> std::sync::RwLockReadGuard<'static, Listing> {
    LISTED.read().unwrap_or_else(|p| p.into_inner())
}

/// Where a buffer's bytes also are: `len` bytes of `file` from `offset`.
#[derive(Debug, Clone)]
pub struct FileRange {
    /// The file the buffer was read from.
    pub file: Arc<File>,
    /// Offset of the buffer's first byte in the file, bytes.
    pub offset: u64,
    /// Bytes.
    pub len: usize,
}

/// The owner of a listed buffer: unlists it when dropped, before the memory is freed.
struct Listed {
    buf: Vec<u8>,
}

impl AsRef<[u8]> for Listed {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let start = self.buf.as_ptr() as usize;
        LISTED
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&start);
    }
}

/// `buf`, the whole content of `file` as read through that handle, as [`Bytes`] listed with
/// the file while they live. A buffer under [`MIN_LISTED_BYTES`], or one past
/// [`MAX_LISTED_FILES`], is returned unlisted (and the file closed).
pub fn from_file(buf: Vec<u8>, file: File) -> Bytes {
    if buf.len() < MIN_LISTED_BYTES {
        return Bytes::from(buf);
    }
    let start = buf.as_ptr() as usize;
    let len = buf.len();
    {
        let mut g = LISTED.write().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_LISTED_FILES {
            return Bytes::from(buf);
        }
        g.insert(start, (len, Arc::new(file)));
    }
    // The Vec's heap buffer does not move when the Vec does: `start` stays its address.
    Bytes::from_owner(Listed { buf })
}

/// The file range holding the same bytes as `slice`, if `slice` lies wholly inside a listed
/// buffer (the rest of a partly written one included).
pub fn source_of(slice: &[u8]) -> Option<FileRange> {
    if slice.is_empty() {
        return None;
    }
    let addr = slice.as_ptr() as usize;
    let g = listing();
    let (&start, (len, file)) = g.range(..=addr).next_back()?;
    let end = start + len;
    (addr + slice.len() <= end).then(|| FileRange {
        file: file.clone(),
        offset: (addr - start) as u64,
        len: slice.len(),
    })
}

/// Buffers listed now.
pub fn listed() -> usize {
    listing().len()
}

/// Held by tests that list buffers, so that no other test lists one at an address a test has
/// just freed and checks.
#[cfg(test)]
static TEST_LISTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Take [`TEST_LISTING`] for the length of a test that lists buffers.
#[cfg(test)]
pub(crate) fn test_serial() -> std::sync::MutexGuard<'static, ()> {
    TEST_LISTING.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let h = File::open(f.path()).unwrap();
        (f, h)
    }

    fn read_range(r: &FileRange) -> Vec<u8> {
        let mut f = r.file.as_ref();
        f.seek(SeekFrom::Start(r.offset)).unwrap();
        let mut out = vec![0; r.len];
        f.read_exact(&mut out).unwrap();
        out
    }

    #[test]
    fn a_slice_of_a_listed_buffer_maps_to_the_same_bytes_of_its_file() {
        let _serial = test_serial();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (_keep, h) = file_with(&data);
        let b = from_file(data.clone(), h);
        let whole = source_of(&b).expect("listed");
        assert_eq!((whole.offset, whole.len), (0, data.len()));
        let part = b.slice(70_001..150_000);
        let r = source_of(&part).expect("inside the listed buffer");
        assert_eq!(r.offset, 70_001);
        assert_eq!(read_range(&r), &data[70_001..150_000]);
        // Memory that is not the buffer is not mapped, even next to it.
        let other = vec![7u8; MIN_LISTED_BYTES];
        assert!(source_of(&other).is_none());
    }

    #[test]
    fn the_entry_goes_when_the_last_clone_of_the_buffer_is_dropped() {
        let _serial = test_serial();
        let data = vec![1u8; MIN_LISTED_BYTES + 10];
        let (_keep, h) = file_with(&data);
        let b = from_file(data, h);
        let addr = b.as_ptr() as usize;
        let clone = b.slice(5..);
        drop(b);
        assert!(
            source_of(&clone).is_some(),
            "a clone keeps the buffer and its entry"
        );
        drop(clone);
        let g = listing();
        assert!(
            !g.contains_key(&addr),
            "unlisted before the memory is freed"
        );
    }

    #[test]
    fn no_more_files_than_the_cap_are_kept_open() {
        let _serial = test_serial();
        let data = vec![5u8; MIN_LISTED_BYTES];
        let (_keep, _) = file_with(&data);
        let open = |n| -> Vec<Bytes> {
            (0..n)
                .map(|_| from_file(data.clone(), File::open(_keep.path()).unwrap()))
                .collect()
        };
        let first = open(MAX_LISTED_FILES - listed());
        assert_eq!(listed(), MAX_LISTED_FILES);
        let past = open(1);
        assert!(source_of(&past[0]).is_none(), "past the cap: unlisted");
        assert_eq!(&past[0][..], &data[..], "and the same bytes");
        drop(first);
        let again = open(1);
        assert!(
            source_of(&again[0]).is_some(),
            "listed again once files closed"
        );
    }

    #[test]
    fn small_buffers_are_not_listed() {
        let _serial = test_serial();
        let data = vec![3u8; MIN_LISTED_BYTES - 1];
        let (_keep, h) = file_with(&data);
        let b = from_file(data, h);
        assert!(source_of(&b).is_none());
        assert_eq!(&b[..], &vec![3u8; MIN_LISTED_BYTES - 1][..]);
    }
}
