//! Source validation: run `ffprobe -count_packets -of json` and judge what it says.
//!
//! Exit status 0 is not enough (design brief section 8): a text file can probe as format `tty`
//! with codec `ansi`, and a truncated MP4 whose `moov` box comes first probes with its whole
//! duration and frame count. So the container format and codecs are whitelisted, and the packets
//! actually present are counted against the frames the header promises. A container without a
//! seek index (MPEG-TS, MPEG-PS) also has its first frame decoded once: a recording cut out of
//! a broadcast starts where that frame does, not at its first packet.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What reel knows about a valid source after probing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// ffprobe's container format name (`mov,mp4,m4a,3gp,3g2,mj2`).
    pub format: String,
    /// Duration of the video stream, seconds: the length of every rendition. Audio that runs
    /// longer is cut there, audio that stops earlier is padded with silence.
    pub duration_seconds: f64,
    /// Coded width of the video stream, pixels.
    pub width: u32,
    /// Coded height of the video stream, pixels.
    pub height: u32,
    /// Display rotation, degrees (phone clips: -90, 90, 180); 0 when none.
    pub rotation: i32,
    /// Video codec name (`h264`).
    pub video_codec: String,
    /// Average frame rate, frames per second.
    pub frame_rate: f64,
    /// Nominal frame rate, frames per second: ffprobe's `r_frame_rate` (the rate a
    /// variable-rate source's timestamps are laid on), or the average when that is implausible
    /// (above 240, or below the average). Renditions are constant-rate at it.
    #[serde(default)]
    pub nominal_frame_rate: f64,
    /// Whether an audio stream exists.
    pub has_audio: bool,
    /// Audio codec name, when there is audio.
    pub audio_codec: Option<String>,
    /// Size of the source, bytes.
    pub size_bytes: u64,
    /// ffprobe index of the video stream reel encodes: the first one marked default, else
    /// the first (cover art never counts). `None` in records written before it existed: the
    /// first video stream.
    #[serde(default)]
    pub video_stream: Option<u32>,
    /// ffprobe index of the audio stream reel encodes, chosen the same way.
    #[serde(default)]
    pub audio_stream: Option<u32>,
    /// How far the video stream starts after the file's first timestamp, seconds (>= 0).
    /// MPEG-TS, edit lists and audio that starts early make it non-zero; chunk seeks add it,
    /// so that time 0 of every rendition is the first video frame.
    #[serde(default)]
    pub video_start_seconds: f64,
    /// Audio start minus video start, seconds: negative when the audio begins before the first
    /// video frame (that part is cut), positive when after (silence is put before it).
    #[serde(default)]
    pub audio_offset_seconds: f64,
    /// Whether the video is interlaced (ffprobe `field_order` tt, bb, tb or bt): deinterlaced
    /// on output.
    #[serde(default)]
    pub interlaced: bool,
    /// Sample (pixel) aspect ratio as width / height of one pixel: 1.0 for square pixels, 32/27
    /// for 16:9 PAL-width DVD video. The display size accounts for it.
    #[serde(default = "square")]
    pub sample_aspect_ratio: f64,
    /// Audio channels of the chosen audio stream (1 mono, 2 stereo, 6 for 5.1); every rendition
    /// carries stereo.
    #[serde(default)]
    pub audio_channels: Option<u32>,
}

fn square() -> f64 {
    1.0
}

impl SourceInfo {
    /// Width and height as displayed, pixels: the width stretched by the sample aspect ratio,
    /// then both swapped for a 90 or 270 degree rotation.
    pub fn display_size(&self) -> (u32, u32) {
        let sar = self.sample_aspect_ratio;
        let width = if sar.is_finite() && sar > 0.0 && (sar - 1.0).abs() > 1e-3 {
            // Even, as every output size must be.
            (((self.width as f64 * sar) / 2.0).round() as u32 * 2).max(2)
        } else {
            self.width
        };
        if self.rotation.rem_euclid(180) == 90 {
            (self.height, width)
        } else {
            (width, self.height)
        }
    }

    /// A plausible source, for tests.
    pub fn example() -> Self {
        Self {
            format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration_seconds: 10.0,
            width: 1920,
            height: 1080,
            rotation: 0,
            video_codec: "h264".into(),
            frame_rate: 30.0,
            nominal_frame_rate: 30.0,
            has_audio: true,
            audio_codec: Some("aac".into()),
            size_bytes: 1_000_000,
            video_stream: Some(0),
            audio_stream: Some(1),
            video_start_seconds: 0.0,
            audio_offset_seconds: 0.0,
            interlaced: false,
            sample_aspect_ratio: 1.0,
            audio_channels: Some(2),
        }
    }
}

/// Why a source was refused or could not be probed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// The source is not a usable video. Deterministic: never retried. The text is a sentence a
    /// person can act on.
    #[error("{0}")]
    Invalid(String),
    /// ffprobe could not be run (missing binary, I/O). May be retried.
    #[error("could not run ffprobe: {0}")]
    Tool(String),
}

/// Container formats reel accepts (ffprobe `format_name`, which may list several, comma-separated).
const FORMATS: &[&str] = &[
    "mov", "mp4", "matroska", "webm", "avi", "mpegts", "flv", "mpeg", "asf", "ogg", "mxf",
];

/// Video codecs reel accepts as input.
const VIDEO_CODECS: &[&str] = &[
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "av1",
    "mpeg4",
    "mpeg2video",
    "mpeg1video",
    "prores",
    "mjpeg",
    "theora",
    "wmv1",
    "wmv2",
    "wmv3",
    "vc1",
    "dnxhd",
    "h263",
    "msmpeg4v2",
    "msmpeg4v3",
    "dvvideo",
    "flv1",
    "rawvideo",
];

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    streams: Vec<Stream>,
    format: Option<Format>,
}

#[derive(Deserialize)]
struct Format {
    format_name: String,
    duration: Option<String>,
    size: Option<String>,
    start_time: Option<String>,
}

#[derive(Deserialize)]
struct Stream {
    index: Option<u32>,
    start_time: Option<String>,
    field_order: Option<String>,
    sample_aspect_ratio: Option<String>,
    channels: Option<u32>,
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    duration: Option<String>,
    nb_frames: Option<String>,
    nb_read_packets: Option<String>,
    #[serde(default)]
    disposition: Disposition,
    #[serde(default)]
    tags: std::collections::HashMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct Disposition {
    #[serde(default)]
    attached_pic: i32,
    #[serde(default)]
    default: i32,
}

/// `n/d` (frame rates) or `n:d` (aspect ratios) as a number; `None` for 0 or malformed.
fn ratio(text: &Option<String>) -> Option<f64> {
    let text = text.as_deref()?;
    let (n, d) = text.split_once('/').or_else(|| text.split_once(':'))?;
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (d > 0.0 && n > 0.0).then(|| n / d)
}

fn num<T: std::str::FromStr>(text: &Option<String>) -> Option<T> {
    text.as_deref()?.parse().ok()
}

/// Matroska's per-track `DURATION` tag (`00:01:02.500000000`), seconds.
fn tag_duration(tags: &std::collections::HashMap<String, String>) -> Option<f64> {
    let text = tags.get("DURATION").or_else(|| tags.get("duration"))?;
    let mut secs = 0.0;
    for part in text.trim().split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(secs)
}

/// The stream of `kind` reel uses: the first marked default, else the first (cover art, an
/// attached picture, is never a video stream). Seed 002 names no rule; players pick the
/// default track, so reel does too.
fn pick<'a>(streams: &'a [Stream], kind: &str) -> Option<&'a Stream> {
    let usable =
        |s: &&Stream| s.codec_type.as_deref() == Some(kind) && s.disposition.attached_pic == 0;
    streams
        .iter()
        .filter(usable)
        .find(|s| s.disposition.default == 1)
        .or_else(|| streams.iter().find(usable))
}

/// Judge ffprobe's JSON (`-count_packets -show_format -show_streams -of json`).
///
/// Errors: [`ProbeError::Invalid`] with the reason when the container or codec is not a video
/// reel accepts, there is no video stream (audio only), no duration, or fewer packets than the
/// header promises (truncated).
pub fn judge(json: &str) -> Result<SourceInfo, ProbeError> {
    judged(json).map(|(info, _)| info)
}

/// [`judge`], with the file's first timestamp (ffprobe's format `start_time`, seconds; 0 when
/// it has none) beside the answer.
fn judged(json: &str) -> Result<(SourceInfo, f64), ProbeError> {
    let probe: Probe = serde_json::from_str(json)
        .map_err(|_| ProbeError::Invalid("the file could not be read as a video".into()))?;
    let format = probe
        .format
        .ok_or_else(|| ProbeError::Invalid("the file is not in a known video container".into()))?;
    let names: Vec<&str> = format.format_name.split(',').collect();
    if !names.iter().any(|n| FORMATS.contains(n)) {
        return Err(ProbeError::Invalid(format!(
            "the file's format ({}) is not a video container reel accepts (MP4, MOV, MKV, WebM, \
             AVI, MPEG-TS, FLV, ...)",
            format.format_name
        )));
    }
    let audio = pick(&probe.streams, "audio");
    let video = pick(&probe.streams, "video");
    let Some(video) = video else {
        return Err(ProbeError::Invalid(match audio {
            Some(a) => format!(
                "the file has only audio ({}): reel needs a video stream",
                a.codec_name.as_deref().unwrap_or("unknown codec")
            ),
            None => "the file has no video stream".into(),
        }));
    };
    let codec = video.codec_name.clone().unwrap_or_default();
    if !VIDEO_CODECS.contains(&codec.as_str()) {
        return Err(ProbeError::Invalid(format!(
            "the video codec ({}) is not one reel can decode",
            if codec.is_empty() { "unknown" } else { &codec }
        )));
    }
    let (width, height) = match (video.width, video.height) {
        (Some(w), Some(h)) if w >= 2 && h >= 2 => (w, h),
        _ => {
            return Err(ProbeError::Invalid(
                "the video stream has no picture size".into(),
            ))
        }
    };
    let positive = |d: &f64| d.is_finite() && *d > 0.0;
    let file_start = num::<f64>(&format.start_time)
        .filter(|t| t.is_finite())
        .unwrap_or(0.0);
    let video_start = num::<f64>(&video.start_time)
        .filter(|t| t.is_finite())
        .unwrap_or(file_start);
    let audio_start = audio
        .and_then(|a| num::<f64>(&a.start_time))
        .filter(|t| t.is_finite())
        .unwrap_or(video_start);
    let frame_rate = ratio(&video.avg_frame_rate)
        .or_else(|| ratio(&video.r_frame_rate))
        .unwrap_or(25.0);
    // The video stream's own length: its duration field (MP4, MPEG-TS), Matroska's DURATION
    // tag, else the file's duration less the part before the video starts.
    let file_duration = num::<f64>(&format.duration).filter(positive);
    let duration = num::<f64>(&video.duration)
        .filter(positive)
        .or_else(|| tag_duration(&video.tags).filter(positive))
        .or_else(|| file_duration.map(|d| d - (video_start - file_start).max(0.0)))
        .filter(positive)
        .ok_or_else(|| ProbeError::Invalid("the video has no duration (0 seconds)".into()))?;
    let packets: Option<u64> = num(&video.nb_read_packets);
    if packets == Some(0) {
        return Err(ProbeError::Invalid(
            "the video stream holds no frames".into(),
        ));
    }
    // Truncation: the header promises frames the file does not hold.
    if let Some(packets) = packets {
        // Without a frame count in the header, the frames its duration promises at the lower
        // of the average and nominal rates: an interlaced H.264 stream in MPEG-TS can declare
        // an average of 25 frames a second while it holds 12.5 (`r_frame_rate` 25/2), and at
        // the average a whole, playable file looked half missing.
        let promised_rate = ratio(&video.r_frame_rate).map_or(frame_rate, |r| r.min(frame_rate));
        let (expected, slack) = match num::<u64>(&video.nb_frames).filter(|n| *n > 0) {
            Some(n) => (n as f64, 0.98),
            None => (duration * promised_rate, 0.80),
        };
        if (packets as f64) < expected * slack {
            return Err(ProbeError::Invalid(format!(
                "the file looks truncated: the video stream holds {packets} of {:.0} frames; \
                 upload the complete file",
                expected
            )));
        }
    }
    let rotation = video
        .side_data_list
        .iter()
        .find_map(|v| v.get("rotation").and_then(|r| r.as_i64()))
        .or_else(|| video.tags.get("rotate").and_then(|r| r.parse().ok()))
        .unwrap_or(0) as i32;
    let interlaced = matches!(
        video.field_order.as_deref(),
        Some("tt" | "bb" | "tb" | "bt")
    );
    let info = SourceInfo {
        format: format.format_name.clone(),
        duration_seconds: duration,
        width,
        height,
        rotation,
        video_codec: codec,
        frame_rate,
        nominal_frame_rate: ratio(&video.r_frame_rate)
            .filter(|r| *r <= 240.0 && *r >= frame_rate * 0.99)
            .unwrap_or(frame_rate),
        has_audio: audio.is_some(),
        audio_codec: audio.and_then(|a| a.codec_name.clone()),
        size_bytes: num(&format.size).unwrap_or(0),
        video_stream: video.index,
        audio_stream: audio.and_then(|a| a.index),
        video_start_seconds: (video_start - file_start).max(0.0),
        audio_offset_seconds: if audio.is_some() {
            audio_start - video_start
        } else {
            0.0
        },
        interlaced,
        sample_aspect_ratio: ratio(&video.sample_aspect_ratio).unwrap_or(1.0),
        audio_channels: audio.and_then(|a| a.channels),
    };
    Ok((info, file_start))
}

/// Whether ffprobe's container `format_name` is one without a seek index: MPEG-TS (`mpegts`,
/// also M2TS) and MPEG-PS (`mpeg`: DVD VOB, camcorder MPG). Measured with ffmpeg 5.1 on
/// sources with a keyframe every 10 s, a seek to 17.3 s there gave a first frame 2.7 s late;
/// on MP4, MOV, Matroska, WebM, AVI, FLV and ASF, at most one frame.
pub fn unindexed_format(format_name: &str) -> bool {
    format_name
        .split(',')
        .any(|f| matches!(f.trim(), "mpegts" | "mpeg"))
}

/// Run ffprobe on `path` (async; killed if the future is dropped or after `timeout`) and judge
/// the result with [`judge`].
///
/// Errors: [`ProbeError::Tool`] when ffprobe cannot run or times out; [`ProbeError::Invalid`]
/// when it cannot read the file or the file is not a usable video.
pub async fn probe(path: &Path, timeout: Duration) -> Result<SourceInfo, ProbeError> {
    let args = [
        "-count_packets",
        "-show_format",
        "-show_streams",
        "-of",
        "json",
    ];
    let out = ffprobe(&args, path, timeout).await?;
    if !out.status.success() {
        return Err(ProbeError::Invalid(unreadable(&String::from_utf8_lossy(
            &out.stderr,
        ))));
    }
    let (info, file_start) = judged(&String::from_utf8_lossy(&out.stdout))?;
    if !unindexed_format(&info.format) {
        return Ok(info);
    }
    // A recording cut out of a broadcast starts anywhere in a group of pictures: its first
    // video packets reference pictures it does not hold, and no decoder shows them.
    Ok(
        match first_frame_time(path, info.video_stream, timeout).await? {
            Some(first) => starting_at_first_frame(info, first - file_start),
            None => info,
        },
    )
}

/// `info` with its video starting at `first` (seconds after the file's first timestamp), the
/// time of the first video frame that decodes, when that comes more than half a frame after
/// the stream's first packet: the video's start and length and the audio's offset are counted
/// from there, so the renditions begin with that frame and the audio heard with it. Frames
/// that never decode are not part of the video (the damage checks skip their packets: see
/// [`decode_check`]'s `from`). A plain function of the probe's answers.
pub fn starting_at_first_frame(mut info: SourceInfo, first: f64) -> SourceInfo {
    let half_frame = if info.frame_rate > 0.0 {
        0.5 / info.frame_rate
    } else {
        0.02
    };
    let lead = first - info.video_start_seconds;
    if !lead.is_finite() || lead <= half_frame || lead >= info.duration_seconds {
        return info;
    }
    info.video_start_seconds = first;
    info.duration_seconds -= lead;
    if info.has_audio {
        info.audio_offset_seconds -= lead;
    }
    info
}

/// The presentation time of the first video frame that decodes from the start of a local
/// file, seconds on the file's own clock (ffmpeg with `-copyts` stops after that frame: it
/// decodes no further than the first keyframe). `None` when none decodes or the time cannot
/// be read.
///
/// Errors: [`ProbeError::Tool`] when ffmpeg cannot run or times out.
async fn first_frame_time(
    path: &Path,
    stream: Option<u32>,
    timeout: Duration,
) -> Result<Option<f64>, ProbeError> {
    let map = stream.map_or_else(|| "0:v:0".to_string(), |i| format!("0:{i}"));
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-v", "quiet", "-nostdin", "-copyts", "-i"])
        .arg(path)
        .args(["-map", &map, "-frames:v", "1", "-c:v", "wrapped_avframe"])
        .args(["-enc_time_base", "1/1000000", "-fps_mode", "passthrough"])
        .args(["-f", "framecrc", "-"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| ProbeError::Tool(format!("ffmpeg took longer than {timeout:?}")))?
        .map_err(|e| ProbeError::Tool(format!("{e} (is ffmpeg installed?)")))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.split(',').nth(1)?.trim().parse::<i64>().ok())
        .map(|us| us as f64 / 1e6))
}

/// Run `ffprobe -v error ARGS path` (killed if the future is dropped or after `timeout`).
///
/// Errors: [`ProbeError::Tool`] when ffprobe cannot run or times out.
async fn ffprobe(
    args: &[&str],
    path: &Path,
    timeout: Duration,
) -> Result<std::process::Output, ProbeError> {
    let mut cmd = tokio::process::Command::new("ffprobe");
    cmd.args(["-v", "error"])
        .args(args)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| ProbeError::Tool(format!("ffprobe took longer than {timeout:?}")))?
        .map_err(|e| {
            ProbeError::Tool(format!(
                "{e} (is ffmpeg installed? apt-get install -y ffmpeg)"
            ))
        })
}

/// ffprobe's error output about the local file `path`, trimmed, with the path replaced by its
/// file name: the server's directories are its own business, and a task's error can reach a
/// video's record (`GET /videos/{id}`).
fn without_path(stderr: &[u8], path: &Path) -> String {
    let text = String::from_utf8_lossy(stderr);
    let full = path.to_string_lossy();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_else(|| "the file".into());
    if full.is_empty() {
        return text.trim().to_string();
    }
    text.replace(full.as_ref(), &name).trim().to_string()
}

/// The sentence for a file ffprobe cannot open, from its error output: an MP4 or MOV without
/// its index (`moov atom not found`: a recording cut off before the camera or phone finished
/// it, or an upload of half the file) is called truncated; anything else names ffprobe's own
/// reason, without the server's path to the file.
pub fn unreadable(stderr: &str) -> String {
    if stderr.contains("moov atom not found") {
        return "the file looks truncated: its MP4 index (the moov box) is missing, as in a \
                recording that was cut off or half a file; upload the complete file"
            .to_string();
    }
    let last = stderr.lines().last().unwrap_or("").trim();
    // ffprobe writes `PATH: reason`; the path is the server's business.
    let reason = last.rsplit(": ").next().unwrap_or(last);
    if reason.contains("Invalid data") {
        "the file is not a video reel can read (invalid data)".to_string()
    } else {
        format!("the file is not a video reel can read ({reason})")
    }
}

/// A stretch of the video stream that cannot be decoded, seconds from the stream's first
/// frame (what a player's clock shows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DamagedSpan {
    /// First frame that does not decode, seconds.
    pub from: f64,
    /// End of the last one, seconds.
    pub to: f64,
    /// Frames in the span that do not decode.
    pub lost: usize,
}

/// Spans of lost frames shorter than this (seconds) are not called damage: an open GOP's
/// first B-frames, or one bad frame, are concealed by the decoder.
pub const DAMAGE_MIN_SECONDS: f64 = 0.25;

/// Lost frames closer than this (seconds) are one span.
const DAMAGE_MERGE_SECONDS: f64 = 1.0;

/// Where a video stream's packets have no decoded frame: `packets` and `frames` are
/// timestamps, seconds (any order). A packet is lost when no frame is within 1 ms of it.
/// Runs of lost packets closer than 1 s are merged; spans shorter than
/// [`DAMAGE_MIN_SECONDS`] are dropped. Times are relative to the first packet. A plain
/// function of the two lists ([`decode_check`] gathers them).
pub fn damaged_spans(packets: &[f64], frames: &[f64]) -> Vec<DamagedSpan> {
    let mut packets: Vec<f64> = packets.iter().copied().filter(|t| t.is_finite()).collect();
    let mut frames: Vec<f64> = frames.iter().copied().filter(|t| t.is_finite()).collect();
    packets.sort_by(f64::total_cmp);
    frames.sort_by(f64::total_cmp);
    let Some(&start) = packets.first() else {
        return Vec::new();
    };
    // A frame's length: the median distance between packets.
    let mut gaps: Vec<f64> = packets.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let frame = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
    let mut spans: Vec<DamagedSpan> = Vec::new();
    let mut j = 0;
    for &p in &packets {
        while j < frames.len() && frames[j] < p - 0.001 {
            j += 1;
        }
        let decoded = j < frames.len() && (frames[j] - p).abs() <= 0.001;
        if decoded {
            continue;
        }
        let (from, to) = (p - start, p - start + frame);
        match spans.last_mut() {
            Some(last) if from - last.to < DAMAGE_MERGE_SECONDS => {
                last.to = to;
                last.lost += 1;
            }
            _ => spans.push(DamagedSpan { from, to, lost: 1 }),
        }
    }
    spans.retain(|s| s.to - s.from >= DAMAGE_MIN_SECONDS);
    spans
}

/// One chunk's decoded frame times (`frames`, seconds, as its frame log counted them) put on
/// the clock of `packets` (seconds, sorted ascending; [`packet_times`]): shifted, if that
/// matches more packets, so that the first frame sits on its nearest packet. The two clocks
/// differ by a constant where ffmpeg counts from another zero than the file's first
/// timestamp: reading MPEG-TS without a seek, it counts from the first timestamp of the
/// streams it reads (the video alone), not of the file. A shift can only move frames onto
/// packets, so damage is never hidden by it: a stretch without frames stays without frames.
pub fn align_frames(frames: &[f64], packets: &[f64]) -> Vec<f64> {
    let matched = |shift: f64| {
        frames
            .iter()
            .filter(|&&f| {
                let t = f + shift;
                let i = packets.partition_point(|&p| p < t - 0.001);
                i < packets.len() && (packets[i] - t).abs() <= 0.001
            })
            .count()
    };
    let Some(&first) = frames.first() else {
        return Vec::new();
    };
    let i = packets.partition_point(|&p| p < first);
    let nearest = [i.checked_sub(1), Some(i)]
        .into_iter()
        .flatten()
        .filter_map(|j| packets.get(j))
        .min_by(|a, b| (*a - first).abs().total_cmp(&(*b - first).abs()));
    let shift = match nearest {
        Some(&p) if matched(p - first) > matched(0.0) => p - first,
        _ => 0.0,
    };
    frames.iter().map(|f| f + shift).collect()
}

/// The sentence for a damaged source, naming its first damaged span.
pub fn damage_message(spans: &[DamagedSpan], frames: usize) -> Option<String> {
    let first = spans.first()?;
    let lost: usize = spans.iter().map(|s| s.lost).sum();
    let more = match spans.len() {
        1 => String::new(),
        n => format!(" (and {} more damaged stretches)", n - 1),
    };
    Some(format!(
        "the file is damaged between {:.1} s and {:.1} s{more}: {lost} of {frames} video frames \
         cannot be decoded; upload an undamaged copy",
        first.from, first.to
    ))
}

/// Decode the whole video stream `stream` (ffprobe index; `None`: the first) of a local file
/// and fail if stretches of it cannot be decoded, so that a source whose middle is damaged is
/// refused rather than published with frozen video (issue 10). One ffprobe pass lists every
/// packet's and every decoded frame's timestamp; loop filtering is skipped (it cannot hide a
/// bitstream error) and two threads decode: about 3 s for a minute of 1080p H.264 on two
/// cores. Sources without usable timestamps are not judged. Packets before `from` (seconds
/// after the file's first timestamp: [`SourceInfo::video_start_seconds`]) are not judged
/// either: a recording that begins inside a group of pictures holds packets no decoder shows
/// ([`starting_at_first_frame`]).
///
/// Errors: [`ProbeError::Invalid`] naming the first damaged span ([`damage_message`]);
/// [`ProbeError::Tool`] when ffprobe cannot run or times out.
pub async fn decode_check(
    path: &Path,
    stream: Option<u32>,
    from: f64,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let select = stream_selector(stream);
    let args = [
        "-threads",
        "2",
        "-skip_loop_filter",
        "all",
        "-select_streams",
        &select,
        "-show_entries",
        "packet=pts_time,dts_time:frame=best_effort_timestamp_time:format=start_time",
        "-of",
        "csv",
    ];
    let out = ffprobe(&args, path, timeout).await?;
    let Some(csv) = read_times(&String::from_utf8_lossy(&out.stdout)) else {
        return Ok(());
    };
    let csv = csv.since_video_start(from);
    match damage_message(&damaged_spans(&csv.packets, &csv.frames), csv.packets.len()) {
        Some(m) => Err(ProbeError::Invalid(m)),
        None => Ok(()),
    }
}

/// ffprobe's `-select_streams` for video stream `stream` (ffprobe index; `None`: the first).
fn stream_selector(stream: Option<u32>) -> String {
    stream.map_or_else(|| "v:0".to_string(), |i| i.to_string())
}

/// The times in ffprobe's csv of [`decode_check`] and [`packet_times`], seconds as ffprobe
/// prints them.
#[derive(Debug, Default, PartialEq)]
struct Times {
    /// Each `packet,{pts},{dts}` line: its presentation time, else its decoding time.
    packets: Vec<f64>,
    /// Each `frame,{best_effort_timestamp}` line that has one.
    frames: Vec<f64>,
    /// The `format,{start_time}` line's time; 0 when absent or `N/A`.
    start: f64,
}

impl Times {
    /// Without the packets before `from` (seconds after the file's first timestamp, 1 ms of
    /// rounding allowed): where the video starts ([`SourceInfo::video_start_seconds`]), so
    /// that packets no decoder shows, before a cut recording's first keyframe, are not judged
    /// ([`starting_at_first_frame`]).
    fn since_video_start(mut self, from: f64) -> Self {
        let start = self.start;
        self.packets.retain(|p| p - start >= from - 0.001);
        self
    }
}

/// Read [`Times`] from ffprobe's csv; `None` when a packet has neither timestamp (such a
/// source is not judged).
fn read_times(text: &str) -> Option<Times> {
    let mut t = Times::default();
    let num = |f: Option<&str>| f.and_then(|x| x.parse::<f64>().ok());
    for line in text.lines() {
        let mut f = line.split(',');
        match f.next() {
            Some("packet") => {
                let pts = num(f.next());
                t.packets.push(pts.or(num(f.next()))?);
            }
            Some("frame") => t.frames.extend(num(f.next())),
            Some("format") => t.start = num(f.next()).unwrap_or(0.0),
            _ => {}
        }
    }
    Some(t)
}

/// The times of every packet of video stream `stream` (ffprobe index; `None`: the first) of a
/// local file, seconds after the file's first timestamp (ffprobe's format `start_time`; 0
/// when it has none), in file order: what ffmpeg's timestamps count from (`-ss` counts from
/// there), so they compare with a chunk's frame log (`media::transcode::read_frame_log`).
/// Reads the container only, decodes nothing: a fraction of a second for a minute of 1080p.
/// Packets before `from` are left out, as in [`decode_check`]. `None` when a packet has no
/// timestamp at all (such a source is not judged, as in [`decode_check`]).
///
/// Errors: [`ProbeError::Tool`] when ffprobe cannot run, times out or fails.
pub async fn packet_times(
    path: &Path,
    stream: Option<u32>,
    from: f64,
    timeout: Duration,
) -> Result<Option<Vec<f64>>, ProbeError> {
    let csv = container_csv(
        path,
        stream,
        "packet=pts_time,dts_time:format=start_time",
        "packets",
        timeout,
    )
    .await?;
    Ok(read_times(&csv).map(|t| from_start(t.since_video_start(from))))
}

/// ffprobe's csv of `entries` (its `-show_entries`) for video stream `stream` (ffprobe index;
/// `None`: the first) of a local file, read from the container without decoding
/// ([`packet_times`], [`keyframe_times`]).
///
/// Errors: [`ProbeError::Tool`] when ffprobe cannot run, times out or fails (saying it could
/// not list `what`).
async fn container_csv(
    path: &Path,
    stream: Option<u32>,
    entries: &str,
    what: &str,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let select = stream_selector(stream);
    let args = [
        "-select_streams",
        &select,
        "-show_entries",
        entries,
        "-of",
        "csv",
    ];
    let out = ffprobe(&args, path, timeout).await?;
    if !out.status.success() {
        return Err(ProbeError::Tool(format!(
            "ffprobe cannot list the {what}: {}",
            without_path(&out.stderr, path)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`packet_times`]'s answer: the packets' times less the file's start.
fn from_start(t: Times) -> Vec<f64> {
    t.packets.into_iter().map(|p| p - t.start).collect()
}

/// The times of the keyframes of video stream `stream` (ffprobe index; `None`: the first) of a
/// local file, seconds after the file's first timestamp (the clock of ffmpeg's `-ss`, as in
/// [`packet_times`]), ascending: where a chunk of a source without an index can start
/// decoding (`media::transcode::keyframe_back_ms`). Reads the container only, decodes nothing:
/// 0.2 s for a minute of 1080p MPEG-TS. Packets without a presentation time are skipped.
///
/// Errors: [`ProbeError::Tool`] when ffprobe cannot run, times out or fails.
pub async fn keyframe_times(
    path: &Path,
    stream: Option<u32>,
    timeout: Duration,
) -> Result<Vec<f64>, ProbeError> {
    let csv = container_csv(
        path,
        stream,
        "packet=pts_time,flags:format=start_time",
        "keyframes",
        timeout,
    )
    .await?;
    Ok(read_keyframes(&csv))
}

/// [`keyframe_times`]'s answer from ffprobe's csv: `packet,{pts},{flags}` lines whose flags
/// hold `K`, less the `format,{start_time}` line's time, sorted.
fn read_keyframes(text: &str) -> Vec<f64> {
    let mut start = 0.0;
    let mut keys = Vec::new();
    for line in text.lines() {
        let mut f = line.split(',');
        match f.next() {
            Some("packet") => {
                let pts = f.next().and_then(|x| x.parse::<f64>().ok());
                if let (Some(pts), true) = (pts, f.next().is_some_and(|x| x.contains('K'))) {
                    keys.push(pts);
                }
            }
            Some("format") => {
                start = f.next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            }
            _ => {}
        }
    }
    let mut keys: Vec<f64> = keys.into_iter().map(|k| k - start).collect();
    keys.sort_by(f64::total_cmp);
    keys
}

/// Video packets (frames) in a local file, by `ffprobe -count_packets`: quick, it reads the
/// container without decoding. For checking an intermediate reel wrote itself (a chunk).
///
/// Errors: [`ProbeError::Tool`] when ffprobe cannot run, times out or cannot read the file.
pub async fn count_video_packets(path: &Path, timeout: Duration) -> Result<u64, ProbeError> {
    let args = [
        "-count_packets",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=nb_read_packets",
        "-of",
        "csv=p=0",
    ];
    let out = ffprobe(&args, path, timeout).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(ProbeError::Tool(format!(
            "ffprobe cannot read the chunk: {}",
            without_path(&out.stderr, path)
        )));
    }
    // No video stream at all (an empty chunk) prints nothing: 0 frames.
    Ok(text.trim().parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ffprobe names the file it cannot read by its full path; a chunk check's error says its
    /// file name only, so a failed task's reason does not show the server's directories.
    #[tokio::test]
    async fn an_unreadable_chunk_is_named_without_the_servers_directories() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = dir.path().join("scratch").join("00003.mp4");
        std::fs::create_dir_all(chunk.parent().unwrap()).unwrap();
        std::fs::write(&chunk, b"not a video, only some words").unwrap();
        let Err(ProbeError::Tool(message)) =
            count_video_packets(&chunk, Duration::from_secs(30)).await
        else {
            panic!("a text file was counted as video");
        };
        let dir_text = dir.path().to_string_lossy().to_string();
        assert!(message.contains("00003.mp4"), "{message}");
        assert!(!message.contains(&dir_text), "{message}");
        assert!(!message.contains("/scratch/"), "{message}");
    }

    #[test]
    fn without_path_keeps_the_reason_and_the_file_name() {
        let path = Path::new("/srv/reel/data/scratch/job-1/720p.mp4");
        let stderr =
            b"/srv/reel/data/scratch/job-1/720p.mp4: Invalid data found when processing input\n";
        assert_eq!(
            without_path(stderr, path),
            "720p.mp4: Invalid data found when processing input"
        );
        assert_eq!(without_path(b"  plain reason \n", path), "plain reason");
    }

    /// A recording that starts 0.56 s into a group of pictures begins at its first frame that
    /// decodes, its audio cut to match; a start within half a frame of the first packet (or a
    /// time that makes no sense) changes nothing.
    #[test]
    fn a_recording_cut_inside_a_group_of_pictures_starts_at_its_first_decoded_frame() {
        let ts = SourceInfo {
            format: "mpegts".into(),
            duration_seconds: 34.5,
            frame_rate: 25.0,
            video_start_seconds: 0.042667,
            audio_offset_seconds: -0.042667,
            ..SourceInfo::example()
        };
        let s = starting_at_first_frame(ts.clone(), 0.602667);
        assert!((s.video_start_seconds - 0.602667).abs() < 1e-9);
        assert!((s.duration_seconds - 33.94).abs() < 1e-9);
        assert!((s.audio_offset_seconds + 0.602667).abs() < 1e-9);
        for first in [0.042667, 0.05, f64::NAN, 40.0] {
            assert_eq!(starting_at_first_frame(ts.clone(), first), ts, "{first}");
        }
        let silent = SourceInfo {
            has_audio: false,
            audio_offset_seconds: 0.0,
            ..ts.clone()
        };
        assert_eq!(
            starting_at_first_frame(silent, 0.602667).audio_offset_seconds,
            0.0
        );
    }

    #[test]
    fn mpeg_ts_and_ps_are_the_containers_without_a_seek_index() {
        for f in ["mpegts", "mpeg"] {
            assert!(unindexed_format(f), "{f}");
        }
        for f in [
            "mov,mp4,m4a,3gp,3g2,mj2",
            "matroska,webm",
            "avi",
            "flv",
            "asf",
        ] {
            assert!(!unindexed_format(f), "{f}");
        }
    }

    fn at(n: std::ops::Range<u32>) -> Vec<f64> {
        n.map(|i| 10.0 + i as f64 / 30.0).collect()
    }

    /// A chunk counted 10 ms off the packets' clock (MPEG-TS read without a seek) is put back
    /// on it; one already on it is left; a gap in it stays a gap.
    #[test]
    fn a_chunk_off_the_packets_clock_is_aligned_without_hiding_a_gap() {
        let packets: Vec<f64> = (0..250).map(|i| 0.010022 + i as f64 * 0.04).collect();
        let chunk: Vec<f64> = (100..225).map(|i| i as f64 * 0.04).collect();
        assert!(
            damaged_spans(&packets[100..225], &chunk).len() == 1,
            "off the clock"
        );
        let aligned = align_frames(&chunk, &packets);
        assert!(
            damaged_spans(&packets[100..225], &aligned).is_empty(),
            "{aligned:?}"
        );
        let on_clock = packets[100..225].to_vec();
        assert_eq!(align_frames(&on_clock, &packets), on_clock);
        let mut gap = chunk.clone();
        gap.drain(40..60);
        let spans = damaged_spans(&packets[100..225], &align_frames(&gap, &packets));
        assert_eq!((spans.len(), spans[0].lost), (1, 20), "{spans:?}");
        assert!(align_frames(&[], &packets).is_empty());
    }

    /// ffprobe's csv for `keyframe_times`: only keyframes count, from the file's start, in
    /// time order; a packet without a time is skipped.
    #[test]
    fn keyframes_are_the_k_packets_from_the_file_start() {
        let csv = "packet,11.400000,K_\npacket,11.440000,__\npacket,N/A,K_\n\
                   packet,1.400000,K_D\npacket,21.400000,K_\nformat,1.400000\n";
        let keys = read_keyframes(csv);
        assert_eq!(keys.len(), 3, "{keys:?}");
        for (k, want) in keys.iter().zip([0.0, 10.0, 20.0]) {
            assert!((k - want).abs() < 1e-9, "{keys:?}");
        }
        assert!(read_keyframes("").is_empty());
    }

    /// ffprobe's csv for `packet_times`: packets (pts, dts; one with neither), then the format.
    #[test]
    fn packet_times_count_from_the_file_start() {
        let csv = "packet,1.400000,1.400000\npacket,1.500000,1.433333\npacket,N/A,1.466667\n\
                   format,1.400000\n";
        let t = read_times(csv).map(from_start).unwrap();
        let want = [0.0, 0.1, 0.066667];
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6) && t.len() == 3,
            "{t:?}"
        );
        let unknown_start = read_times("packet,2.0,2.0\nformat,N/A\n").map(from_start);
        assert_eq!(unknown_start, Some(vec![2.0]));
        assert_eq!(read_times("packet,N/A,N/A\nformat,0.0\n"), None);
    }

    /// Packets before the video's start (seconds after the file's first timestamp) are left
    /// out of both damage checks; one within 1 ms of it is kept.
    #[test]
    fn packets_before_the_first_decodable_frame_are_not_judged() {
        let csv = "packet,1.400000,1.400000\npacket,1.440000,1.440000\npacket,1.960000,1.960000\n\
                   packet,2.000000,2.000000\nformat,1.400000\n";
        let t = read_times(csv).unwrap().since_video_start(0.5605);
        assert_eq!(t.packets, vec![1.96, 2.0]);
        assert_eq!(t.start, 1.4);
    }

    #[test]
    fn a_whole_stream_has_no_damage() {
        let p = at(0..200);
        assert!(damaged_spans(&p, &p).is_empty());
        // Out of order (B-frames) and a stream start offset change nothing.
        let mut shuffled = p.clone();
        shuffled.reverse();
        assert!(damaged_spans(&shuffled, &p).is_empty());
    }

    #[test]
    fn a_lost_middle_is_named_from_the_streams_start() {
        let packets = at(0..200);
        let frames: Vec<f64> = at(0..66).into_iter().chain(at(128..200)).collect();
        let spans = damaged_spans(&packets, &frames);
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert!((spans[0].from - 66.0 / 30.0).abs() < 1e-6, "{spans:?}");
        assert!((spans[0].to - 128.0 / 30.0).abs() < 1e-6, "{spans:?}");
        assert_eq!(spans[0].lost, 62);
        let m = damage_message(&spans, 200).unwrap();
        assert!(m.contains("damaged between 2.2 s and 4.3 s"), "{m}");
        assert!(m.contains("62 of 200"), "{m}");
    }

    #[test]
    fn a_few_lost_frames_are_not_damage_but_scattered_losses_merge() {
        let packets = at(0..200);
        // Two leading B-frames of an open GOP, and one lone frame: concealed.
        let frames: Vec<f64> = packets
            .iter()
            .enumerate()
            .filter(|(i, _)| ![0, 1, 100].contains(i))
            .map(|(_, t)| *t)
            .collect();
        assert!(damaged_spans(&packets, &frames).is_empty());
        // Every third frame lost over two seconds: one span.
        let frames: Vec<f64> = packets
            .iter()
            .enumerate()
            .filter(|(i, _)| !(60..120).contains(i) || i % 3 != 0)
            .map(|(_, t)| *t)
            .collect();
        let spans = damaged_spans(&packets, &frames);
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(spans[0].lost, 20);
    }

    fn stream_json(extra: &str) -> String {
        format!(
            r#"{{"streams":[{{"codec_type":"video","codec_name":"h264","width":1280,"height":720,
            "avg_frame_rate":"30/1","nb_frames":"300","nb_read_packets":"300"{extra}}},
            {{"codec_type":"audio","codec_name":"aac"}}],
            "format":{{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"10.0","size":"12345"}}}}"#
        )
    }

    #[test]
    fn a_good_source_is_described() {
        let s = judge(&stream_json("")).unwrap();
        assert_eq!((s.width, s.height, s.rotation), (1280, 720, 0));
        assert_eq!(s.duration_seconds, 10.0);
        assert!(s.has_audio);
        assert_eq!(s.size_bytes, 12345);
        assert_eq!(s.frame_rate, 30.0);
    }

    #[test]
    fn rotation_comes_from_side_data() {
        let s = judge(&stream_json(r#","side_data_list":[{"rotation":-90}]"#)).unwrap();
        assert_eq!(s.rotation, -90);
        assert_eq!(s.display_size(), (720, 1280));
    }

    #[test]
    fn text_probed_as_tty_is_refused() {
        let j = r#"{"streams":[{"codec_type":"video","codec_name":"ansi","width":640,"height":400}],
                   "format":{"format_name":"tty","duration":"1.0"}}"#;
        let e = judge(j).unwrap_err().to_string();
        assert!(e.contains("tty"), "{e}");
    }

    #[test]
    fn audio_only_is_refused_with_the_codec() {
        let j = r#"{"streams":[{"codec_type":"audio","codec_name":"aac"}],
                   "format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"3.0"}}"#;
        let e = judge(j).unwrap_err().to_string();
        assert!(e.contains("only audio (aac)"), "{e}");
    }

    #[test]
    fn truncated_file_with_whole_header_is_refused() {
        let j = stream_json("").replace(r#""nb_read_packets":"300""#, r#""nb_read_packets":"120""#);
        let e = judge(&j).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("120 of 300"), "{e}");
    }

    /// What ffprobe says of an interlaced H.264 stream in MPEG-TS at 12.5 frames a second (65 s,
    /// 813 frames) whose average rate reads 25: a whole file, which ffmpeg decodes without an
    /// error, was refused as truncated ("813 of 1626 frames").
    #[test]
    fn a_stream_holding_fewer_frames_than_its_average_rate_says_is_not_truncated() {
        let ts = |packets: &str, duration: &str| {
            format!(
                r#"{{"streams":[{{"codec_type":"video","codec_name":"h264","width":720,"height":576,
                "field_order":"tt","r_frame_rate":"25/2","avg_frame_rate":"25/1",
                "nb_read_packets":"{packets}"}}],
                "format":{{"format_name":"mpegts","duration":"{duration}"}}}}"#
            )
        };
        let s = judge(&ts("813", "65.04")).unwrap();
        assert!(s.interlaced);
        assert_eq!(s.frame_rate, 25.0);
        // Half of those frames is still a truncation, at the lower rate.
        let e = judge(&ts("400", "65.04")).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("400 of 813"), "{e}");
    }

    /// Matroska gives no frame count: a file whose header says 20 s and which holds 8 s of
    /// frames is truncated, judged from its duration and frame rate.
    #[test]
    fn a_matroska_file_holding_less_than_its_duration_is_truncated() {
        let j = r#"{"streams":[{"codec_type":"video","codec_name":"h264","width":320,"height":240,
             "r_frame_rate":"25/1","avg_frame_rate":"25/1","nb_read_packets":"200"}],
             "format":{"format_name":"matroska,webm","duration":"20.0"}}"#;
        let e = judge(j).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("200 of 500"), "{e}");
    }

    #[test]
    fn cover_art_is_not_a_video_stream() {
        let j = r#"{"streams":[{"codec_type":"video","codec_name":"mjpeg","width":500,"height":500,
                   "disposition":{"attached_pic":1}},{"codec_type":"audio","codec_name":"mp3"}],
                   "format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"3.0"}}"#;
        assert!(judge(j).unwrap_err().to_string().contains("only audio"));
    }

    #[test]
    fn the_default_video_stream_is_chosen_and_cover_art_never_is() {
        let j = r#"{"streams":[
            {"index":0,"codec_type":"video","codec_name":"mjpeg","width":500,"height":500,
             "disposition":{"attached_pic":1,"default":1}},
            {"index":1,"codec_type":"video","codec_name":"h264","width":320,"height":240,
             "disposition":{"default":0}},
            {"index":2,"codec_type":"video","codec_name":"h264","width":640,"height":360,
             "duration":"4.0","disposition":{"default":1}},
            {"index":3,"codec_type":"audio","codec_name":"aac","channels":6,
             "disposition":{"default":0}}],
            "format":{"format_name":"matroska,webm","duration":"4.0"}}"#;
        let s = judge(j).unwrap();
        assert_eq!((s.video_stream, s.width, s.height), (Some(2), 640, 360));
        assert_eq!((s.audio_stream, s.audio_channels), (Some(3), Some(6)));
        // No stream marked default: the first usable one.
        let s = judge(&j.replace(
            r#""default":1}},
            {"index":3"#,
            r#""default":0}},
            {"index":3"#,
        ))
        .unwrap();
        assert_eq!(s.video_stream, Some(1));
    }

    #[test]
    fn start_offsets_are_taken_against_the_first_video_frame() {
        // MPEG-TS style: the file starts at 1.4 s, video at 1.41 s, audio at 1.4 s.
        let j = r#"{"streams":[
            {"index":0,"codec_type":"video","codec_name":"h264","width":320,"height":240,
             "start_time":"1.410000","duration":"10.0","field_order":"tt"},
            {"index":1,"codec_type":"audio","codec_name":"mp2","start_time":"1.400000"}],
            "format":{"format_name":"mpegts","start_time":"1.400000","duration":"10.01"}}"#;
        let s = judge(j).unwrap();
        assert!((s.video_start_seconds - 0.01).abs() < 1e-9, "{s:?}");
        assert!((s.audio_offset_seconds + 0.01).abs() < 1e-9, "{s:?}");
        assert_eq!(s.duration_seconds, 10.0, "the video's own duration");
        assert!(s.interlaced);
    }

    #[test]
    fn matroska_track_duration_wins_over_a_longer_file() {
        // Audio runs to 20 s, the video stops at 8 s: renditions are 8 s long.
        let j = r#"{"streams":[
            {"index":0,"codec_type":"video","codec_name":"h264","width":320,"height":240,
             "avg_frame_rate":"25/1","nb_read_packets":"200","tags":{"DURATION":"00:00:08.000000000"}},
            {"index":1,"codec_type":"audio","codec_name":"aac","tags":{"DURATION":"00:00:20.000000000"}}],
            "format":{"format_name":"matroska,webm","duration":"20.0"}}"#;
        let s = judge(j).unwrap();
        assert_eq!(s.duration_seconds, 8.0);
    }

    #[test]
    fn anamorphic_pixels_widen_the_display_size() {
        let s = judge(&stream_json(r#","sample_aspect_ratio":"4:3""#)).unwrap();
        assert_eq!(s.display_size(), (1706, 720));
        let s = judge(&stream_json(r#","sample_aspect_ratio":"0:1""#)).unwrap();
        assert_eq!(s.display_size(), (1280, 720), "0:1 means unknown: square");
    }

    #[test]
    fn an_mp4_without_its_index_is_truncated_and_no_server_path_is_shown() {
        let e = unreadable(
            "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5] moov atom not found\n/srv/reel/objects/sources/ab: Invalid data found when processing input\n",
        );
        assert!(e.contains("truncated") && !e.contains("/srv"), "{e}");
        let e =
            unreadable("/srv/reel/objects/sources/ab: Invalid data found when processing input");
        assert_eq!(e, "the file is not a video reel can read (invalid data)");
        let e = unreadable("/srv/reel/objects/sources/ab: End of file");
        assert_eq!(e, "the file is not a video reel can read (End of file)");
    }

    #[test]
    fn zero_duration_and_garbage_json_are_refused() {
        let j = stream_json("").replace(r#""duration":"10.0""#, r#""duration":"0.0""#);
        assert!(judge(&j).unwrap_err().to_string().contains("no duration"));
        assert!(matches!(judge("not json"), Err(ProbeError::Invalid(_))));
    }
}
