//! Container sniffing from the first bytes of a file, before ffprobe sees it.
//!
//! ffprobe will happily read a text file as a "video" (format `tty`, codec `ansi`) when the name
//! does not steer its demuxer (design brief section 8). Sniffing the magic numbers first gives a
//! clear reason for plainly wrong input and lets an upload be refused early.

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// A known audio/video container; the name is for messages.
    Container(&'static str),
    /// Plainly not a video; the reason is a sentence for a person.
    NotVideo(String),
    /// Too few bytes to tell yet (fewer than [`SNIFF_BYTES`] and no magic matched).
    NeedMore,
    /// No known magic; let ffprobe decide (some containers have no fixed magic).
    Unknown,
}

/// How many leading bytes [`sniff`] wants to decide.
pub const SNIFF_BYTES: usize = 4096;

/// Classify the leading bytes of a file. `complete` says the slice is the whole file.
pub fn sniff(head: &[u8], complete: bool) -> Sniff {
    if head.is_empty() {
        return if complete {
            Sniff::NotVideo("the file is empty".into())
        } else {
            Sniff::NeedMore
        };
    }
    if head.len() >= 8 && &head[4..8] == b"ftyp" {
        return Sniff::Container("MP4/MOV (ISO BMFF)");
    }
    if head.len() >= 8 && matches!(&head[4..8], b"moov" | b"mdat" | b"free" | b"wide" | b"skip") {
        return Sniff::Container("QuickTime");
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Sniff::Container("Matroska/WebM");
    }
    if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"AVI " {
        return Sniff::Container("AVI");
    }
    if head.starts_with(b"FLV") {
        return Sniff::Container("FLV");
    }
    if head.starts_with(b"OggS") {
        return Sniff::Container("Ogg");
    }
    if head.starts_with(&[0x30, 0x26, 0xB2, 0x75]) {
        return Sniff::Container("ASF/WMV");
    }
    if head.starts_with(&[0x00, 0x00, 0x01, 0xBA]) {
        return Sniff::Container("MPEG program stream");
    }
    if head.len() >= 189 && head[0] == 0x47 && head[188] == 0x47 {
        return Sniff::Container("MPEG transport stream");
    }
    if let Some(kind) = known_non_video(head) {
        return Sniff::NotVideo(format!("this is {kind}, not a video"));
    }
    if head.len() < SNIFF_BYTES && !complete {
        return Sniff::NeedMore;
    }
    if looks_like_text(head) {
        return Sniff::NotVideo(
            "this is a text file, not a video: upload a video file such as MP4, MOV, MKV or WebM"
                .into(),
        );
    }
    Sniff::Unknown
}

/// The first bytes of a body as they arrive, kept (at most [`SNIFF_BYTES`]) until [`sniff`]
/// can judge them: the one place both upload paths (`PUT`/`POST /upload`, a tus `PATCH`) cut
/// the window.
#[derive(Debug, Default)]
pub struct Head(Vec<u8>);

impl Head {
    /// A head that starts with bytes already received (a resumed upload's stored parts).
    pub fn starting_with(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Keep what the window still wants of `chunk`, then judge the bytes kept; `complete`
    /// says the file ends with this chunk.
    pub fn feed(&mut self, chunk: &[u8], complete: bool) -> Sniff {
        let want = SNIFF_BYTES.saturating_sub(self.0.len()).min(chunk.len());
        self.0.extend_from_slice(&chunk[..want]);
        self.judge(complete)
    }

    /// Judge the bytes kept as they are; `complete` says nothing more of the file will come.
    pub fn judge(&self, complete: bool) -> Sniff {
        sniff(&self.0, complete)
    }
}

fn known_non_video(head: &[u8]) -> Option<&'static str> {
    let table: &[(&[u8], &str)] = &[
        (b"\x89PNG", "a PNG image"),
        (b"\xFF\xD8\xFF", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1F\x8B", "a gzip archive"),
        (b"ID3", "an MP3 audio file"),
        (b"fLaC", "a FLAC audio file"),
        (b"\x7FELF", "a program (ELF)"),
    ];
    table
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, kind)| *kind)
        .or_else(|| {
            (head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WAVE")
                .then_some("a WAV audio file")
        })
}

fn looks_like_text(head: &[u8]) -> bool {
    // Cut a possibly split UTF-8 sequence at the end.
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0C'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp4_and_matroska_are_containers() {
        let mut mp4 = vec![0, 0, 0, 0x20];
        mp4.extend_from_slice(b"ftypisom");
        assert_eq!(sniff(&mp4, false), Sniff::Container("MP4/MOV (ISO BMFF)"));
        assert!(matches!(
            sniff(&[0x1A, 0x45, 0xDF, 0xA3, 1], false),
            Sniff::Container(_)
        ));
    }

    #[test]
    fn text_is_not_video_once_enough_is_seen() {
        let text = b"hello, this is my holiday video, honest\n";
        assert_eq!(sniff(text, false), Sniff::NeedMore);
        assert!(matches!(sniff(text, true), Sniff::NotVideo(r) if r.contains("text file")));
        let long = "lorem ipsum ".repeat(400);
        assert!(matches!(sniff(long.as_bytes(), false), Sniff::NotVideo(_)));
    }

    #[test]
    fn empty_and_images_are_not_video() {
        assert!(matches!(sniff(b"", true), Sniff::NotVideo(r) if r.contains("empty")));
        assert!(
            matches!(sniff(b"\x89PNG\r\n\x1a\n", false), Sniff::NotVideo(r) if r.contains("PNG"))
        );
    }

    #[test]
    fn a_head_keeps_the_window_and_judges_text_once_it_is_full() {
        let mut head = Head::default();
        let piece = b"my holiday video, honest\n".repeat(40); // 1,000 bytes
        for _ in 0..4 {
            assert_eq!(head.feed(&piece, false), Sniff::NeedMore);
        }
        assert!(matches!(head.feed(&piece, false), Sniff::NotVideo(r) if r.contains("text")));
        assert_eq!(head.0.len(), SNIFF_BYTES, "never more than the window");
        // A short text is judged whole once the body ends.
        let mut short = Head::starting_with(b"hello\n".to_vec());
        assert_eq!(short.feed(b"again\n", false), Sniff::NeedMore);
        assert!(matches!(short.judge(true), Sniff::NotVideo(_)));
        let mut mp4 = Head::default();
        assert!(matches!(
            mp4.feed(b"\0\0\0\x20ftypisom", false),
            Sniff::Container(_)
        ));
    }

    #[test]
    fn random_bytes_are_left_to_ffprobe() {
        let bytes: Vec<u8> = (0..SNIFF_BYTES as u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        assert_eq!(sniff(&bytes, false), Sniff::Unknown);
    }
}
