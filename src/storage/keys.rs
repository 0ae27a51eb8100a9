//! The object key layout (design brief section 2) and the checks that keep ids and names inside
//! their prefix. Every key reel writes is built here; nothing else formats keys.
//!
//! ```text
//! sources/{video_id}                         the uploaded bytes, immutable
//! videos/{video_id}/record.json              the video record
//! videos/{video_id}/{rendition}/init.mp4     init segment
//! videos/{video_id}/{rendition}/00000.m4s    segments
//! videos/{video_id}/{rendition}/rendition.json  what the rendition holds (sizes, durations)
//! videos/{video_id}/{rendition}/index.m3u8   media playlist: written last, marks the rendition done
//! videos/{video_id}/master.m3u8              multivariant playlist: the commit point of `ready`
//! uploads/direct/{token}                     a body being received, before its id is known
//! leases/video/{video_id}/{epoch:020}        ownership claims; the highest epoch owns the video
//! leases/video/{video_id}/{epoch:020}.released  the holder let that epoch go
//! work/{video_id}/{rendition}/chunk-NNNN.mp4  intermediate: one encoded chunk (deleted at ready)
//! work/{video_id}/audio-{kbps}.m4a           intermediate: the audio, encoded once
//! active/{video_id}                          marker: the video is not terminal yet (an index the
//!                                            reconcile loop lists instead of every record)
//! uploads/{upload_id}/info.json              a resumable (tus) upload's durable state
//! uploads/{upload_id}/{offset:020}.{writer}  one received part of it, starting at `offset`,
//!                                            written by one PATCH (`writer`, 16 hex)
//! ```
//!
//! A resumable upload id is `{node_id}.{32 lowercase hex}`: it names its home node (the node
//! that created it) and contains no `/`, no `..` and nothing outside `[a-z0-9_.-]`, so it can
//! never escape `uploads/` (and can never equal `direct`).

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// A video id is exactly 32 lowercase hex digits.
pub fn valid_video_id(id: &str) -> bool {
    id.len() == 32
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Rendition names: 1 to 32 of `a-z 0-9 _ -`.
pub fn valid_rendition_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.chars().all(is_name_char)
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
            (digits.len() == 5 && digits.chars().all(|c| c.is_ascii_digit()))
                .then(|| digits.parse().ok())
                .flatten()
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

/// `videos/{id}/record.json`
pub fn record(id: &str) -> String {
    format!("videos/{id}/record.json")
}

/// `videos/{id}/master.m3u8`
pub fn multivariant(id: &str) -> String {
    format!("videos/{id}/master.m3u8")
}

/// `videos/{id}/{rendition}/{file}`
pub fn rendition_file(id: &str, rendition: &str, file: &str) -> String {
    format!("videos/{id}/{rendition}/{file}")
}

/// `videos/{id}/{rendition}/rendition.json`
pub fn rendition_info(id: &str, rendition: &str) -> String {
    rendition_file(id, rendition, "rendition.json")
}

/// `work/{id}/{rendition}/chunk-{index:04}.mp4`
pub fn chunk(id: &str, rendition: &str, index: usize) -> String {
    format!("work/{id}/{rendition}/chunk-{index:04}.mp4")
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

/// `uploads/direct/{token}`
pub fn direct_upload(token: &str) -> String {
    format!("uploads/direct/{token}")
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
    (valid_node_id(node)
        && random.len() == 32
        && random
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
    .then_some(node)
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
    }
}
