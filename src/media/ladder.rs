//! The ladder: which renditions to encode for a given source.
//!
//! Rules (issue 2, design brief section 5): never upscale; keep the source's aspect ratio;
//! always produce at least one rendition, even for a 176x144 source; dimensions are even (H.264
//! 4:2:0 needs it).

use serde::{Deserialize, Serialize};

use crate::config::RungConfig;
use crate::media::probe::SourceInfo;

/// One planned rendition of one video: what a transcode task produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// Rendition name (`720p`), used in URIs and object keys.
    pub name: String,
    /// Output width, pixels (even).
    pub width: u32,
    /// Output height, pixels (even).
    pub height: u32,
    /// Target video bitrate, kbit/s.
    pub video_kbps: u32,
    /// Audio bitrate, kbit/s; 0 when the source has no audio.
    pub audio_kbps: u32,
}

fn even(x: f64) -> u32 {
    let v = (x / 2.0).round() as u32 * 2;
    v.max(2)
}

/// Plan the renditions for `source` from the configured `rungs` (highest first).
///
/// A rung is kept when its height is at most the source's short side. The output keeps the
/// source's display aspect ratio: the short side becomes the rung's height. When no rung fits
/// (a source smaller than the lowest rung), one rendition at the source's own size is planned
/// with the lowest rung's bitrates, named after its short side (`144p`).
pub fn plan(rungs: &[RungConfig], source: &SourceInfo) -> Vec<Rendition> {
    let (w, h) = source.display_size();
    let short = w.min(h).max(2);
    let landscape = w >= h;
    let audio = |kbps: u32| if source.has_audio { kbps } else { 0 };
    let size_for = |target_short: u32| -> (u32, u32) {
        let scale = target_short as f64 / short as f64;
        let long = even(w.max(h) as f64 * scale);
        let short = even(target_short as f64);
        if landscape {
            (long, short)
        } else {
            (short, long)
        }
    };
    let mut out: Vec<Rendition> = rungs
        .iter()
        .filter(|r| r.height <= short)
        .map(|r| {
            let (width, height) = size_for(r.height);
            Rendition {
                name: r.name.clone(),
                width,
                height,
                video_kbps: r.video_kbps,
                audio_kbps: audio(r.audio_kbps),
            }
        })
        .collect();
    if out.is_empty() {
        if let Some(lowest) = rungs.iter().min_by_key(|r| r.height) {
            let (width, height) = size_for(short);
            out.push(Rendition {
                name: format!("{}p", even(short as f64)),
                width,
                height,
                video_kbps: lowest.video_kbps,
                audio_kbps: audio(lowest.audio_kbps),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_ladder;

    fn src(w: u32, h: u32, rotation: i32, audio: bool) -> SourceInfo {
        SourceInfo {
            width: w,
            height: h,
            rotation,
            has_audio: audio,
            ..SourceInfo::example()
        }
    }

    #[test]
    fn full_hd_source_gets_the_whole_ladder() {
        let r = plan(&default_ladder(), &src(1920, 1080, 0, true));
        let names: Vec<_> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["1080p", "720p", "480p", "360p", "240p"]);
        assert_eq!((r[1].width, r[1].height), (1280, 720));
        assert_eq!((r[2].width, r[2].height), (854, 480));
        assert_eq!(r[0].audio_kbps, 128);
    }

    #[test]
    fn never_upscales() {
        let r = plan(&default_ladder(), &src(1280, 720, 0, true));
        assert_eq!(r[0].name, "720p");
        assert!(r.iter().all(|r| r.height <= 720));
    }

    #[test]
    fn tiny_source_still_gets_one_rendition_at_its_own_size() {
        let r = plan(&default_ladder(), &src(176, 144, 0, false));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].name.as_str(), r[0].width, r[0].height),
            ("144p", 176, 144)
        );
        assert_eq!(r[0].video_kbps, 400);
        assert_eq!(r[0].audio_kbps, 0, "no audio in the source, none planned");
    }

    #[test]
    fn portrait_and_rotated_sources_keep_their_orientation() {
        let r = plan(&default_ladder(), &src(1080, 1920, 0, true));
        assert_eq!((r[1].width, r[1].height), (720, 1280));
        // A phone clip stored landscape with a 90 degree rotation displays as portrait.
        let r = plan(&default_ladder(), &src(1920, 1080, -90, true));
        assert_eq!((r[1].width, r[1].height), (720, 1280));
    }

    #[test]
    fn odd_sizes_round_to_even() {
        let r = plan(&default_ladder(), &src(641, 361, 0, true));
        assert!(r.iter().all(|r| r.width % 2 == 0 && r.height % 2 == 0));
    }
}
