//! HLS playlists (RFC 8216): reading the media playlist ffmpeg writes, and writing reel's own
//! media playlists and the multivariant playlist. Parsing and writing go through `m3u8-rs`.

use serde::{Deserialize, Serialize};

use crate::media::ladder::Rendition;

/// File name of segment `index` of a rendition (`00007.m4s`): CMAF fragments, five digits.
pub fn segment_name(index: usize) -> String {
    format!("{index:05}.m4s")
}

/// File name of a rendition's init segment (`EXT-X-MAP`, RFC 8216 section 4.3.2.5).
pub const INIT_NAME: &str = "init.mp4";
/// File name of a rendition's media playlist.
pub const MEDIA_PLAYLIST_NAME: &str = "index.m3u8";
/// File name of a video's multivariant playlist.
pub const MULTIVARIANT_NAME: &str = "master.m3u8";

/// One media segment as encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Duration, seconds (`EXTINF`).
    pub duration_seconds: f64,
    /// Size, bytes.
    pub bytes: u64,
}

/// What one finished rendition holds: the facts the multivariant playlist is written from.
/// Stored as `videos/{id}/{dir}/rendition.json` beside the segments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenditionOutput {
    /// The rendition as planned.
    pub rendition: Rendition,
    /// RFC 6381 codecs string for `CODECS` (`avc1.4d401e,mp4a.40.2`).
    pub codecs: String,
    /// Frame rate, frames per second (`FRAME-RATE`).
    pub frame_rate: f64,
    /// Init segment size, bytes.
    pub init_bytes: u64,
    /// The segments, in order; segment `k` is [`segment_name`]`(k)`.
    pub segments: Vec<SegmentInfo>,
    /// Where the files are stored, relative to the video's prefix: `{rendition}/{token}`, the
    /// directory of the one task attempt that wrote them. Empty in outputs stored before
    /// attempt directories existed: the files are under the rendition's name.
    #[serde(default)]
    pub dir: String,
}

impl RenditionOutput {
    /// The directory the files are stored in: [`Self::dir`], or the rendition's name when empty.
    pub fn stored_dir(&self) -> &str {
        if self.dir.is_empty() {
            &self.rendition.name
        } else {
            &self.dir
        }
    }

    /// Peak segment bit rate, bit/s: `BANDWIDTH` (RFC 8216 section 4.3.4.2).
    pub fn peak_bandwidth(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.duration_seconds > 0.0)
            .map(|s| (s.bytes as f64 * 8.0 / s.duration_seconds.max(0.5)).ceil() as u64)
            .max()
            .unwrap_or(0)
    }

    /// Average segment bit rate, bit/s: `AVERAGE-BANDWIDTH`.
    pub fn average_bandwidth(&self) -> u64 {
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        let secs: f64 = self.segments.iter().map(|s| s.duration_seconds).sum();
        if secs > 0.0 {
            (bytes as f64 * 8.0 / secs).ceil() as u64
        } else {
            0
        }
    }

    /// Total duration, seconds.
    pub fn duration_seconds(&self) -> f64 {
        self.segments.iter().map(|s| s.duration_seconds).sum()
    }
}

/// Read segment durations (seconds) from a media playlist, in order.
///
/// Errors: the text is not a media playlist.
pub fn read_durations(playlist: &[u8]) -> Result<Vec<f64>, String> {
    match m3u8_rs::parse_playlist_res(playlist) {
        Ok(m3u8_rs::Playlist::MediaPlaylist(p)) => {
            Ok(p.segments.iter().map(|s| s.duration as f64).collect())
        }
        Ok(_) => Err("expected a media playlist, found a multivariant playlist".into()),
        Err(e) => Err(format!("unreadable media playlist: {e}")),
    }
}

fn write(p: &m3u8_rs::Playlist) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = p.write_to(&mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The media playlist of one rendition: VOD, fMP4 with `EXT-X-MAP`, relative segment URIs.
///
/// `EXT-X-TARGETDURATION` is the largest `EXTINF` rounded up (RFC 8216 section 4.3.3.1).
pub fn media_playlist(output: &RenditionOutput) -> String {
    let target = output
        .segments
        .iter()
        .map(|s| s.duration_seconds.round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let segments = output
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| m3u8_rs::MediaSegment {
            uri: segment_name(i),
            duration: s.duration_seconds as f32,
            map: (i == 0).then(|| m3u8_rs::Map {
                uri: INIT_NAME.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    write(&m3u8_rs::Playlist::MediaPlaylist(m3u8_rs::MediaPlaylist {
        version: Some(7),
        target_duration: target,
        media_sequence: 0,
        segments,
        end_list: true,
        playlist_type: Some(m3u8_rs::MediaPlaylistType::Vod),
        independent_segments: true,
        ..Default::default()
    }))
}

/// The multivariant playlist: one variant stream per rendition, highest bandwidth first, URIs
/// relative (`720p/index.m3u8`) so players stay on whatever path they fetched it from.
pub fn multivariant_playlist(outputs: &[RenditionOutput]) -> String {
    let mut variants: Vec<_> = outputs
        .iter()
        .map(|o| m3u8_rs::VariantStream {
            uri: format!("{}/{}", o.rendition.name, MEDIA_PLAYLIST_NAME),
            bandwidth: o.peak_bandwidth().max(1),
            average_bandwidth: Some(o.average_bandwidth().max(1)),
            codecs: Some(o.codecs.clone()),
            resolution: Some(m3u8_rs::Resolution {
                width: o.rendition.width as u64,
                height: o.rendition.height as u64,
            }),
            frame_rate: Some((o.frame_rate * 1000.0).round() / 1000.0),
            ..Default::default()
        })
        .collect();
    variants.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
    write(&m3u8_rs::Playlist::MasterPlaylist(
        m3u8_rs::MasterPlaylist {
            version: Some(7),
            variants,
            independent_segments: true,
            ..Default::default()
        },
    ))
}

/// The RFC 6381 codecs string for an H.264 init segment: `avc1.PPCCLL` read from its `avcC`
/// box, plus `mp4a.40.2` (AAC-LC) when `has_audio`. Falls back to Main profile level 3.1 when
/// the box is not found.
pub fn codecs_from_init(init: &[u8], has_audio: bool) -> String {
    let video = init
        .windows(4)
        .position(|w| w == b"avcC")
        .and_then(|at| init.get(at + 5..at + 8))
        .map(|b| format!("avc1.{:02x}{:02x}{:02x}", b[0], b[1], b[2]))
        .unwrap_or_else(|| "avc1.4d401f".to_string());
    if has_audio {
        format!("{video},mp4a.40.2")
    } else {
        video
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(name: &str, sizes: &[(f64, u64)]) -> RenditionOutput {
        RenditionOutput {
            rendition: Rendition {
                name: name.into(),
                width: 640,
                height: 360,
                video_kbps: 1000,
                audio_kbps: 96,
            },
            codecs: "avc1.4d401e,mp4a.40.2".into(),
            frame_rate: 29.97,
            init_bytes: 900,
            segments: sizes
                .iter()
                .map(|&(duration_seconds, bytes)| SegmentInfo {
                    duration_seconds,
                    bytes,
                })
                .collect(),
            dir: String::new(),
        }
    }

    #[test]
    fn bandwidth_is_peak_and_average_of_segments() {
        let o = output("360p", &[(4.0, 500_000), (4.0, 250_000), (2.0, 100_000)]);
        assert_eq!(o.peak_bandwidth(), 1_000_000);
        assert_eq!(o.average_bandwidth(), 680_000);
    }

    #[test]
    fn media_playlist_round_trips_through_a_parser() {
        let o = output("360p", &[(4.0, 1), (4.0, 1), (1.5, 1)]);
        let text = media_playlist(&o);
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\""), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:4"), "{text}");
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        assert_eq!(
            read_durations(text.as_bytes()).unwrap(),
            vec![4.0, 4.0, 1.5]
        );
        match m3u8_rs::parse_playlist_res(text.as_bytes()).unwrap() {
            m3u8_rs::Playlist::MediaPlaylist(p) => {
                let uris: Vec<_> = p.segments.iter().map(|s| s.uri.as_str()).collect();
                assert_eq!(uris, ["00000.m4s", "00001.m4s", "00002.m4s"]);
            }
            _ => panic!("not a media playlist"),
        }
    }

    #[test]
    fn target_duration_rounds_like_rfc_8216() {
        let o = output("x", &[(4.4, 1), (4.6, 1)]);
        assert!(media_playlist(&o).contains("#EXT-X-TARGETDURATION:5"));
    }

    #[test]
    fn multivariant_lists_variants_highest_first_with_attributes() {
        let low = output("240p", &[(4.0, 100_000)]);
        let high = output("360p", &[(4.0, 400_000)]);
        let text = multivariant_playlist(&[low, high]);
        match m3u8_rs::parse_playlist_res(text.as_bytes()).unwrap() {
            m3u8_rs::Playlist::MasterPlaylist(p) => {
                let uris: Vec<_> = p.variants.iter().map(|v| v.uri.as_str()).collect();
                assert_eq!(uris, ["360p/index.m3u8", "240p/index.m3u8"]);
                assert_eq!(p.variants[0].bandwidth, 800_000);
                assert_eq!(
                    p.variants[0].codecs.as_deref(),
                    Some("avc1.4d401e,mp4a.40.2")
                );
                let r = p.variants[0].resolution.unwrap();
                assert_eq!((r.width, r.height), (640, 360));
            }
            _ => panic!("not a multivariant playlist"),
        }
    }

    #[test]
    fn codecs_come_from_the_avcc_box() {
        let mut init = b"....avcC\x01\x64\x00\x28\xff".to_vec();
        init.extend_from_slice(b"rest");
        assert_eq!(codecs_from_init(&init, true), "avc1.640028,mp4a.40.2");
        assert_eq!(codecs_from_init(b"nothing", false), "avc1.4d401f");
    }
}
