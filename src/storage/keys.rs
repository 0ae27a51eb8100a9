//! The object key layout (design brief section 2) and the checks that keep ids and names inside
//! their prefix. Every key reel writes is built here; nothing else formats keys.
//!
//! ```text
//! sources/{video_id}                         the uploaded bytes, immutable
//! catalog/{id[0..2]}/{video_id}             empty: the index `GET /videos` pages through
//! meta/catalog-built                         marker: every stored video has its catalog entry
//! videos/{video_id}/record.json              the video record
//! videos/{video_id}/{dir}/init.mp4           init segment
//! videos/{video_id}/{dir}/00000.m4s          segments
//! videos/{video_id}/{dir}/rendition.json     what the rendition holds (sizes, durations)
//! videos/{video_id}/{dir}/index.m3u8         media playlist: written last, marks the directory complete
//! videos/{video_id}/outputs.json             the chosen directory of each rendition (create-if-absent)
//! videos/{video_id}/master.m3u8              multivariant playlist: the commit point of `ready`
//! uploads/direct/{token}                     a body being received, before its id is known
//! leases/video/{video_id}/{epoch:020}        ownership claims; the highest epoch owns the video
//! leases/video/{video_id}/{epoch:020}.released  the holder let that epoch go
//! work/{video_id}/{rendition}/chunk-NNNN.mp4  intermediate: one encoded chunk (deleted at ready)
//! work/{video_id}/audio-{kbps}.m4a           intermediate: the audio, encoded once
//! work/{video_id}/frames/chunk-NNNN.json     intermediate: the frame times a chunk decoded
//! work/{video_id}/attempts/{token}           marker: a task attempt stores a rendition directory
//! active/{video_id}                          marker: the video is not terminal yet (an index the
//!                                            reconcile loop lists instead of every record)
//! uploads/{upload_id}/info.json              a resumable (tus) upload's durable state
//! uploads/{upload_id}/{offset:020}.{writer}  one received part of it, starting at `offset`,
//!                                            written by one PATCH (`writer`, 16 hex)
//! ```
//!
//! A rendition's `{dir}` is `{rendition}/{attempt token}` (see [`attempt_token`]): each task
//! attempt that stores a rendition writes its own directory, which no other attempt writes, so a
//! deposed or reclaimed attempt still uploading can never change the files a committed video
//! names (issue 9). `outputs.json` names the directory chosen for each rendition. Videos stored
//! before that have `{dir}` = `{rendition}` (files straight under the rendition's name).
//!
//! A resumable upload id is `{node_id}.{32 lowercase hex}`: it names its home node (the node
//! that created it) and contains no `/`, no `..` and nothing outside `[a-z0-9_.-]`, so it can
//! never escape `uploads/` (and can never equal `direct`).

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

/// Whether `b` is a lowercase hex digit.
pub fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// A video id is exactly 32 lowercase hex digits.
pub fn valid_video_id(id: &str) -> bool {
    // Bytes, not chars, and a fold, not `all`: the compiler checks many bytes at once. Every
    // segment request checks one (issue 11, P1).
    id.len() == 32 && id.bytes().fold(true, |ok, b| ok & is_lower_hex(b))
}

/// Rendition names: 1 to 32 of `a-z 0-9 _ -`.
pub fn valid_rendition_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().fold(true, |ok, b| ok & is_name_byte(b))
}

/// Node ids: same rule as rendition names.
pub fn valid_node_id(id: &str) -> bool {
    valid_rendition_name(id)
}

/// Files a rendition directory may hold that clients can fetch: the init segment, a segment
/// (`NNNNN.m4s`), or the media playlist. Returns the segment index for segments.
pub fn parse_rendition_file(name: &str) -> Option<RenditionFile> {
    match name {
        "init.mp4" => Some(RenditionFile::Init),
        "index.m3u8" => Some(RenditionFile::MediaPlaylist),
        _ => {
            let digits = name.strip_suffix(".m4s")?;
            if digits.len() != 5 {
                return None;
            }
            digits
                .bytes()
                .try_fold(0, |k: usize, b| {
                    b.is_ascii_digit().then(|| k * 10 + usize::from(b - b'0'))
                })
                .map(RenditionFile::Segment)
        }
    }
}

/// A fetchable file of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenditionFile {
    /// `init.mp4`
    Init,
    /// `NNNNN.m4s`, with its index
    Segment(usize),
    /// `index.m3u8`
    MediaPlaylist,
}

/// `sources/{id}`
pub fn source(id: &str) -> String {
    format!("sources/{id}")
}

/// `catalog`: the prefix of the video catalog.
pub const CATALOG: &str = "catalog";

/// Present once every video stored before the catalog existed has its entry
/// (`Storage::build_catalog`).
pub const CATALOG_BUILT: &str = "meta/catalog-built";

/// `catalog/{id[0..2]}/{id}`: the video's entry in the catalog (an empty object). Entries sort
/// by id as keys, and the first two hex digits split them into 256 shards, so a store whose
/// listings are not in key order (a local directory) reads a page from a shard or two, not the
/// whole catalog.
pub fn catalog(id: &str) -> String {
    format!("{CATALOG}/{}/{id}", id.get(..2).unwrap_or("00"))
}

/// `catalog/{shard:02x}`: one of the 256 shards of the catalog.
pub fn catalog_shard(shard: u8) -> String {
    format!("{CATALOG}/{shard:02x}")
}

/// `videos/{id}/record.json`
pub fn record(id: &str) -> String {
    format!("videos/{id}/record.json")
}

/// `videos/{id}/master.m3u8`
pub fn multivariant(id: &str) -> String {
    format!("videos/{id}/master.m3u8")
}

/// `videos/{id}/{dir}/{file}`: a file of a rendition stored in `dir` (`{rendition}/{token}`, or
/// `{rendition}` for videos stored before attempt directories).
pub fn rendition_file(id: &str, dir: &str, file: &str) -> String {
    format!("videos/{id}/{dir}/{file}")
}

/// [`rendition_file`] of a [`RenditionFile`] (`init.mp4`, `index.m3u8`, `NNNNN.m4s`), built in
/// one allocation.
pub fn rendition_file_of(id: &str, dir: &str, file: RenditionFile) -> String {
    let mut k = String::with_capacity("videos///".len() + id.len() + dir.len() + "00000.m4s".len());
    // Writing to a `String` does not fail.
    let _ = write_rendition_file(&mut k, id, dir, file);
    k
}

/// Bytes a [`FileKey`] holds on the stack: a video id (32), a rendition name (up to 32) and an
/// attempt token (up to 50, [`attempt_token`]) with the separators and the longest file name
/// (24) take at most 148.
pub const FILE_KEY_STACK_BYTES: usize = 160;

/// [`rendition_file_of`] for a lookup: the key on the stack, no allocation, when it fits in
/// [`FILE_KEY_STACK_BYTES`] (any key reel writes does), else on the heap. A session looks one
/// up on every request (issue 11, P1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKey {
    /// Built in place.
    Stack(arrayvec::ArrayString<FILE_KEY_STACK_BYTES>),
    /// Too long for the stack.
    Heap(String),
}

impl std::ops::Deref for FileKey {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            FileKey::Stack(k) => k,
            FileKey::Heap(k) => k,
        }
    }
}

/// [`rendition_file_of`] as a [`FileKey`].
pub fn rendition_file_key(id: &str, dir: &str, file: RenditionFile) -> FileKey {
    let mut k = arrayvec::ArrayString::new();
    match write_rendition_file(&mut k, id, dir, file) {
        Ok(()) => FileKey::Stack(k),
        Err(_) => FileKey::Heap(rendition_file_of(id, dir, file)),
    }
}

/// Write `videos/{id}/{dir}/{file}` to `k`; `Err` when `k` has no room (an `ArrayString`).
fn write_rendition_file(
    k: &mut impl std::fmt::Write,
    id: &str,
    dir: &str,
    file: RenditionFile,
) -> std::fmt::Result {
    k.write_str("videos/")?;
    k.write_str(id)?;
    k.write_char('/')?;
    k.write_str(dir)?;
    k.write_char('/')?;
    match file {
        RenditionFile::Init => k.write_str(crate::media::playlist::INIT_NAME),
        RenditionFile::MediaPlaylist => k.write_str(crate::media::playlist::MEDIA_PLAYLIST_NAME),
        RenditionFile::Segment(i) => write_segment_name(k, i),
    }
}

/// Write segment `i`'s file name, `{i:05}.m4s` (at least five digits), without `format!`'s
/// machinery: a session forms one on every request (issue 11, P1).
fn write_segment_name(k: &mut impl std::fmt::Write, i: usize) -> std::fmt::Result {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(i);
    for _ in digits.len()..5 {
        k.write_char('0')?;
    }
    k.write_str(digits)?;
    k.write_str(".m4s")
}

/// `videos/{id}/{dir}/rendition.json`
pub fn rendition_info(id: &str, dir: &str) -> String {
    rendition_file(id, dir, "rendition.json")
}

/// The token naming one task attempt's output directory: `e{epoch}-{instance:016x}-a{attempt}`
/// (lease epoch of the dispatching job, its random instance, the attempt number). Unique per
/// dispatch: a restarted job draws a new instance, and each re-dispatch a new attempt.
pub fn attempt_token(epoch: u64, instance: u64, attempt: u32) -> String {
    format!("e{epoch}-{instance:016x}-a{attempt}")
}

/// `{rendition}/{token}`: the directory (under `videos/{id}/`) one attempt stores a rendition in.
pub fn attempt_dir(rendition: &str, token: &str) -> String {
    format!("{rendition}/{token}")
}

/// Whether `dir` is a rendition directory reel writes: `{rendition}` or `{rendition}/{token}`
/// with a valid rendition name and a token of `a-z 0-9 -` (1 to 64). Directories read back
/// from stored records are checked with it before they become keys.
pub fn valid_rendition_dir(dir: &str) -> bool {
    match dir.split_once('/') {
        None => valid_rendition_name(dir),
        Some((r, token)) => {
            valid_rendition_name(r)
                && (1..=64).contains(&token.len())
                && token
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }
    }
}

/// `videos/{id}/outputs.json`: which directory each rendition of the video was committed from.
pub fn outputs_choice(id: &str) -> String {
    format!("videos/{id}/outputs.json")
}

/// `videos/{id}/`: everything stored for a video's playback.
pub fn video_prefix(id: &str) -> String {
    format!("videos/{id}")
}

/// The rendition directory (under `videos/{id}/`) that `key` lies in: `{rendition}` for
/// `videos/{id}/{rendition}/{file}`, `{rendition}/{token}` for
/// `videos/{id}/{rendition}/{token}/{file}`; `None` for the video's own objects
/// (`record.json`, `master.m3u8`, `outputs.json`) and keys of other videos.
pub fn rendition_dir_of<'a>(id: &str, key: &'a str) -> Option<&'a str> {
    let rest = key
        .strip_prefix("videos/")?
        .strip_prefix(id)?
        .strip_prefix('/')?;
    let (dir, _file) = rest.rsplit_once('/')?;
    Some(dir)
}

/// The complete directories of `rendition` among `listed` (keys under `videos/{id}/`): those
/// holding a media playlist, which an attempt writes last. Sorted, so every node that reads
/// the same listing picks the same one first.
pub fn complete_rendition_dirs<'a>(
    id: &str,
    rendition: &str,
    listed: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut dirs: Vec<String> = listed
        .into_iter()
        .filter(|k| k.rsplit('/').next() == Some("index.m3u8"))
        .filter_map(|k| rendition_dir_of(id, k))
        .filter(|d| d.split('/').next() == Some(rendition) && valid_rendition_dir(d))
        .map(str::to_string)
        .collect();
    dirs.sort();
    dirs
}

/// `work/{id}/attempts/{token}`: marker put by an attempt before it stores a rendition
/// directory, so a directory left by an attempt that outlived its job is found by the
/// `work/` sweep.
pub fn attempt_marker(id: &str, token: &str) -> String {
    format!("work/{id}/attempts/{token}")
}

/// `work/{id}/{rendition}/chunk-{index:04}.mp4`
pub fn chunk(id: &str, rendition: &str, index: usize) -> String {
    format!("work/{id}/{rendition}/chunk-{index:04}.mp4")
}

/// `work/{id}/frames/chunk-{index:04}.json`: the times of the frames chunk `index` decoded
/// (a JSON array of seconds after the source file's first timestamp), stored before its
/// encoded chunks; the job checks the source for damage from these.
pub fn chunk_frames(id: &str, index: usize) -> String {
    format!("work/{id}/frames/chunk-{index:04}.json")
}

/// `work/{id}/audio-{kbps}.m4a`
pub fn audio(id: &str, kbps: u32) -> String {
    format!("work/{id}/audio-{kbps}.m4a")
}

/// `work/{id}`: every intermediate of a video.
pub fn work_prefix(id: &str) -> String {
    format!("work/{id}")
}

/// `active/{id}`: present while the video is `uploaded` or `processing`.
pub fn active(id: &str) -> String {
    format!("active/{id}")
}

/// `leases/video/{id}/` (prefix of a video's lease epochs)
pub fn lease_prefix(id: &str) -> String {
    format!("leases/video/{id}")
}

/// `leases/video/{id}/{epoch:020}`: zero-padded so names sort by epoch.
pub fn lease(id: &str, epoch: u64) -> String {
    format!("leases/video/{id}/{epoch:020}")
}

/// What a released lease's marker adds to the lease's name.
pub const LEASE_RELEASED_SUFFIX: &str = ".released";

/// `leases/video/{id}/{epoch:020}.released`: the holder let the lease go (see
/// [`super::lease`]).
pub fn lease_released(id: &str, epoch: u64) -> String {
    format!("{}{LEASE_RELEASED_SUFFIX}", lease(id, epoch))
}

/// `uploads/direct`: where `PUT` bodies are staged.
pub const DIRECT_UPLOADS: &str = "uploads/direct";

/// `uploads/direct/{token}`
pub fn direct_upload(token: &str) -> String {
    format!("{DIRECT_UPLOADS}/{token}")
}

/// A new resumable upload id homed on `node_id`: `{node_id}.{32 random lowercase hex}`.
pub fn new_upload_id(node_id: &str) -> String {
    format!(
        "{node_id}.{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The home node named by a valid upload id, `None` for anything else (so a hostile id is
/// refused before it reaches a key).
pub fn upload_home(upload_id: &str) -> Option<&str> {
    let (node, random) = upload_id.split_once('.')?;
    (valid_node_id(node) && random.len() == 32 && random.bytes().all(is_lower_hex)).then_some(node)
}

/// Whether `upload_id` is a well-formed resumable upload id (see [`new_upload_id`]).
pub fn valid_upload_id(upload_id: &str) -> bool {
    upload_home(upload_id).is_some()
}

/// `uploads/` : the prefix of every upload.
pub const UPLOADS: &str = "uploads";

/// `uploads/{id}/`: everything of one resumable upload (delete it to terminate the upload).
pub fn upload_prefix(upload_id: &str) -> String {
    format!("uploads/{upload_id}/")
}

/// `uploads/{id}/info.json`
pub fn upload_info(upload_id: &str) -> String {
    format!("uploads/{upload_id}/info.json")
}

/// `uploads/{id}/{offset:020}`: the part that starts at byte `offset` (zero-padded so the parts
/// list in order). Parts written before writers were named.
pub fn upload_part(upload_id: &str, offset: u64) -> String {
    format!("uploads/{upload_id}/{offset:020}")
}

/// The object of one stored part: `uploads/{id}/{offset:020}.{writer}` when the `PATCH` that
/// wrote it is named (every part since writers were: two writers at one offset never share an
/// object, and the upload's state names the one the store let in), else [`upload_part`].
pub fn upload_part_of(upload_id: &str, offset: u64, writer: Option<&str>) -> String {
    match writer {
        Some(w) => format!("uploads/{upload_id}/{offset:020}.{w}"),
        None => upload_part(upload_id, offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendition_directories_are_found_and_checked() {
        let id = "0123456789abcdef0123456789abcdef";
        let token = attempt_token(3, 0xab, 2);
        assert_eq!(token, "e3-00000000000000ab-a2");
        let dir = attempt_dir("720p", &token);
        assert!(valid_rendition_dir(&dir));
        assert!(
            valid_rendition_dir("720p"),
            "stored before attempt directories"
        );
        for bad in [
            "720p/../x",
            "720p/a/b",
            "../720p",
            "720p/",
            "/x",
            "720p/A",
            "",
        ] {
            assert!(!valid_rendition_dir(bad), "{bad:?}");
        }
        let file = rendition_file(id, &dir, "00003.m4s");
        assert_eq!(rendition_dir_of(id, &file), Some(dir.as_str()));
        assert_eq!(
            rendition_dir_of(id, &rendition_file(id, "720p", "init.mp4")),
            Some("720p")
        );
        assert_eq!(rendition_dir_of(id, &multivariant(id)), None);
        assert_eq!(rendition_dir_of(id, &outputs_choice(id)), None);
        assert_eq!(
            rendition_dir_of("ffffffffffffffffffffffffffffffff", &file),
            None
        );

        // Only directories with a media playlist are complete; other renditions' do not count.
        let done = attempt_dir("720p", &attempt_token(2, 1, 1));
        let listed = [
            rendition_file(id, &dir, "00000.m4s"),
            rendition_file(id, &done, "00000.m4s"),
            rendition_file(id, &done, "index.m3u8"),
            rendition_file(id, "720p", "index.m3u8"),
            rendition_file(id, &attempt_dir("1080p", &token), "index.m3u8"),
            multivariant(id),
        ];
        assert_eq!(
            complete_rendition_dirs(id, "720p", listed.iter().map(String::as_str)),
            vec!["720p".to_string(), done]
        );
    }

    #[test]
    fn upload_ids_name_their_home_and_cannot_escape() {
        let id = new_upload_id("node-1");
        assert_eq!(upload_home(&id), Some("node-1"));
        assert!(valid_upload_id(&id));
        assert_eq!(
            upload_part(&id, 5),
            format!("uploads/{id}/00000000000000000005")
        );
        for bad in [
            "",
            "direct",
            "node-1",
            "node-1.",
            "../x.0123456789abcdef0123456789abcdef",
            "node-1/..0123456789abcdef0123456789abcdef",
            "node-1.0123456789abcdef0123456789abcdeF",
            "node-1.0123456789abcdef0123456789abcdef/x",
            "node-1.0123456789abcdef0123456789abcde",
            ".0123456789abcdef0123456789abcdef",
            "a.b.0123456789abcdef0123456789abcdef",
        ] {
            assert!(!valid_upload_id(bad), "{bad}");
        }
    }

    #[test]
    fn ids_that_could_escape_are_refused() {
        assert!(valid_video_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "../../etc/passwd",
            "0123456789ABCDEF0123456789ABCDEF",
            "",
            "a/b",
            "0123",
        ] {
            assert!(!valid_video_id(bad), "{bad}");
        }
        assert!(!valid_rendition_name(".."));
        assert!(!valid_rendition_name("720p/.."));
        assert!(valid_rendition_name("720p"));
    }

    #[test]
    fn rendition_files_are_whitelisted() {
        assert_eq!(
            parse_rendition_file("00007.m4s"),
            Some(RenditionFile::Segment(7))
        );
        assert_eq!(parse_rendition_file("init.mp4"), Some(RenditionFile::Init));
        assert_eq!(parse_rendition_file("rendition.json"), None);
        assert_eq!(parse_rendition_file("7.m4s"), None);
        assert_eq!(parse_rendition_file("../00001.m4s"), None);
        assert_eq!(parse_rendition_file("+0001.m4s"), None);
        assert_eq!(parse_rendition_file("0000a.m4s"), None);
        assert_eq!(
            parse_rendition_file("99999.m4s"),
            Some(RenditionFile::Segment(99_999))
        );
    }

    #[test]
    fn a_rendition_files_key_names_the_file_its_name_parses_to() {
        use crate::media::playlist::{segment_name, INIT_NAME, MEDIA_PLAYLIST_NAME};
        let dir = "720p/e2-00000000000000ff-a1";
        for (file, name) in [
            (RenditionFile::Init, INIT_NAME.to_string()),
            (
                RenditionFile::MediaPlaylist,
                MEDIA_PLAYLIST_NAME.to_string(),
            ),
            (RenditionFile::Segment(0), segment_name(0)),
            (RenditionFile::Segment(42), segment_name(42)),
            (RenditionFile::Segment(99_999), segment_name(99_999)),
        ] {
            let key = rendition_file_of("ab12", dir, file);
            assert_eq!(key, rendition_file("ab12", dir, &name));
            assert_eq!(
                parse_rendition_file(key.rsplit('/').next().unwrap()),
                Some(file)
            );
        }
        // Past five digits the name grows, as `segment_name`'s does.
        let key = rendition_file_of("ab12", dir, RenditionFile::Segment(123_456));
        assert_eq!(key, rendition_file("ab12", dir, &segment_name(123_456)));
    }

    /// The lookup key is the same text as the stored key: on the stack for the keys reel
    /// writes (the longest rendition name and attempt token), on the heap past the stack's room.
    #[test]
    fn a_lookup_key_is_the_stored_key_on_the_stack_or_the_heap() {
        let id = "0123456789abcdef0123456789abcdef";
        let longest = format!(
            "{}/{}",
            "r".repeat(32),
            attempt_token(u64::MAX, u64::MAX, u32::MAX)
        );
        for dir in ["720p", longest.as_str()] {
            for file in [
                RenditionFile::Init,
                RenditionFile::MediaPlaylist,
                RenditionFile::Segment(7),
                RenditionFile::Segment(usize::MAX),
            ] {
                let key = rendition_file_key(id, dir, file);
                assert!(matches!(key, FileKey::Stack(_)), "{dir} {file:?}");
                assert_eq!(&*key, rendition_file_of(id, dir, file));
            }
        }
        let too_long = "d".repeat(FILE_KEY_STACK_BYTES);
        let key = rendition_file_key(id, &too_long, RenditionFile::Segment(3));
        assert!(matches!(key, FileKey::Heap(_)));
        assert_eq!(
            &*key,
            rendition_file_of(id, &too_long, RenditionFile::Segment(3))
        );
    }
}
