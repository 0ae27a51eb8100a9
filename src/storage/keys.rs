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
//! work/{video_id}/{rendition}/chunk-NNNN.mp4  intermediate: one encoded chunk (deleted at ready)
//! work/{video_id}/audio-{kbps}.m4a           intermediate: the audio, encoded once
//! active/{video_id}                          marker: the video is not terminal yet (an index the
//!                                            reconcile loop lists instead of every record)
//! ```

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

/// `uploads/direct/{token}`
pub fn direct_upload(token: &str) -> String {
    format!("uploads/direct/{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
