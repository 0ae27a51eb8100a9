//! One transcode task: encode a source into one rendition's CMAF (fMP4) segments with ffmpeg.
//!
//! ffmpeg runs through `ffmpeg-sidecar` (the system `ffmpeg` on PATH; nothing is downloaded).
//! The runner is blocking code: call it from `spawn_blocking`. It reports progress as seconds of
//! output written and can be cancelled from another thread with [`Cancel`], which kills the
//! ffmpeg process.
//!
//! Keyframes are forced at every multiple of the segment duration with scene-cut detection off,
//! so every rendition of a video cuts its segments at the same instants (segment `k` of each
//! rendition covers the same time): what lets a player switch between variant streams.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use ffmpeg_sidecar::ffmpeg_time_duration::FfmpegTimeDuration;

use serde::{Deserialize, Serialize};

use crate::media::ladder::Rendition;
use crate::media::playlist::{INIT_NAME, MEDIA_PLAYLIST_NAME};
use crate::media::probe::{unindexed_format, SourceInfo};

/// How every task of one video reads its source, decided once from the probe so that every
/// chunk, the audio and every rendition agree on one timeline whose zero is the source's first
/// video frame. See `docs/formats.md`.
///
/// The default (all `None` and zero) is what tasks planned before this existed did: the first
/// video and audio streams, no offsets, no deinterlacing, audio neither cut nor padded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InputMap {
    /// ffprobe index of the video stream (the default one); `None`: the first.
    pub video_stream: Option<u32>,
    /// ffprobe index of the audio stream; `None`: the first.
    pub audio_stream: Option<u32>,
    /// Video start after the file's first timestamp, seconds: added to every chunk's seek,
    /// because ffmpeg's `-ss` counts from the file's first timestamp.
    pub video_start_seconds: f64,
    /// Audio start minus video start, seconds: a negative offset cuts that much audio, a
    /// positive one puts that much silence first.
    pub audio_offset_seconds: f64,
    /// The video's length, seconds: the audio is cut or padded with silence to it. 0: unknown
    /// (neither).
    pub duration_seconds: f64,
    /// Deinterlace (yadif, one frame per frame) before scaling.
    pub deinterlace: bool,
    /// The source's nominal frame rate, frames per second: chunks are made constant-rate at it
    /// (`fps`), holding a frame over a variable-rate source's gaps. 0: unknown (no `fps`).
    pub frame_rate: f64,
    /// How far before its boundary a chunk's seek starts, seconds: half a frame, so a frame
    /// that sits exactly on a boundary falls in one chunk, not in none or both, whatever the
    /// rounding of the source's time base.
    pub seek_margin_seconds: f64,
    /// The container has no seek index (MPEG-TS, MPEG-PS: `probe::unindexed_format`): ffmpeg's
    /// seek lands at the target's place in the file and decoding starts at the next keyframe,
    /// so a chunk is first encoded with [`ChunkSeek::Earlier`] (see [`first_seek`]). `false`
    /// in tasks planned before this existed, which start with [`ChunkSeek::Index`].
    pub unindexed: bool,
}

impl InputMap {
    /// The map for a probed source.
    pub fn for_source(source: &SourceInfo) -> Self {
        Self {
            video_stream: source.video_stream,
            audio_stream: source.audio_stream,
            video_start_seconds: source.video_start_seconds,
            audio_offset_seconds: source.audio_offset_seconds,
            duration_seconds: source.duration_seconds,
            deinterlace: source.interlaced,
            frame_rate: source.nominal_frame_rate,
            seek_margin_seconds: if source.frame_rate > 1.0 {
                (0.5 / source.frame_rate).min(0.02)
            } else {
                0.0
            },
            unindexed: unindexed_format(&source.format),
        }
    }

    /// Where a chunk that starts `start` seconds after the first video frame is cut from a
    /// decode of the whole source ([`ChunkSeek::Decode`]), on a clock restarted at that frame
    /// (`setpts=PTS-STARTPTS` before the `trim`). Without a seek ffmpeg counts an MPEG-TS from
    /// the first timestamp of the streams it reads (the video alone) and other containers from
    /// the file's first timestamp; cut on the file's clock, a TS whose video starts 21 ms after
    /// its audio (AAC) lost each decoded chunk's first frame and took the next chunk's.
    fn decoded_start(&self, start: f64) -> f64 {
        if start > 0.0 {
            (start - self.seek_margin_seconds).max(0.0)
        } else {
            0.0
        }
    }

    /// The `-ss` of a chunk that starts `start` seconds after the first video frame.
    fn seek(&self, start: f64) -> f64 {
        let margin = if start > 0.0 {
            self.seek_margin_seconds
        } else {
            0.0
        };
        (start + self.video_start_seconds - margin).max(0.0)
    }

    /// The `-map` argument of the video stream.
    fn video(&self) -> String {
        self.video_stream
            .map_or_else(|| "0:v:0".to_string(), |i| format!("0:{i}"))
    }

    /// The `-map` argument of the audio stream.
    fn audio(&self) -> String {
        self.audio_stream
            .map_or_else(|| "0:a:0".to_string(), |i| format!("0:{i}"))
    }

    /// The video filter chain for rendition `r`: deinterlace if needed, restart timestamps at
    /// the first frame, scale to the rendition's (display-oriented) size with square pixels.
    /// ffmpeg applies the source's rotation before this chain (its default `-autorotate`), so
    /// a portrait phone clip arrives upright and is scaled, never stretched.
    pub fn video_filter(&self, r: &Rendition) -> String {
        self.filter_chain(r, None, None)
    }

    /// The one video filter chain of every encode: deinterlace, `cut` (a chunk's `trim` when
    /// it decodes from the source's start), timestamps restarted at the first frame, for a
    /// chunk of `chunk_seconds` constant rate at the nominal frame rate and the span cut to
    /// its length, then the rendition's size with square pixels.
    fn filter_chain(
        &self,
        r: &Rendition,
        cut: Option<String>,
        chunk_seconds: Option<f64>,
    ) -> String {
        format!(
            "{},{}",
            self.shared_chain(cut, chunk_seconds),
            scale_filter(r)
        )
    }

    /// The part of [`InputMap::filter_chain`] every rendition shares: everything before the
    /// scaling. A chunk runs it once and splits its frames to every rendition's scaler.
    fn shared_chain(&self, cut: Option<String>, chunk_seconds: Option<f64>) -> String {
        let timed = self.timed_chain(chunk_seconds);
        match self.decoded_chain(cut) {
            Some(decoded) => format!("{decoded},{timed}"),
            None => timed,
        }
    }

    /// The first part of [`InputMap::shared_chain`]: deinterlace and `cut`, each frame keeping
    /// its decoded timestamp (a chunk's frame log is taken here). `None` when empty.
    fn decoded_chain(&self, cut: Option<String>) -> Option<String> {
        let mut f: Vec<String> = Vec::new();
        if self.deinterlace {
            f.push("yadif=mode=send_frame:deint=all".into());
        }
        f.extend(cut);
        (!f.is_empty()).then(|| f.join(","))
    }

    /// The rest of [`InputMap::shared_chain`]: timestamps restarted at zero, and a chunk made
    /// constant-rate and cut to its length.
    fn timed_chain(&self, chunk_seconds: Option<f64>) -> String {
        let mut f: Vec<String> = vec!["setpts=PTS-STARTPTS".into()];
        if let Some(len) = chunk_seconds {
            // A chunk of whole frames (`plan_chunks`) ends a quarter of a frame before its
            // length, so the frame that starts the next chunk is never also the last of this
            // one, however its time rounds. Not half a frame: `trim` rounds its end to the
            // nearest tick of the frame rate, and half a frame rounds down onto the chunk's
            // own last frame (479 frames of 480 at 30 fps).
            //
            // `eof_action=pass` rounds the end of the input up, not to the nearest frame: at the
            // end of a source whose video starts after its audio (an MP4 remuxed from MPEG-TS,
            // video 21 ms later), ffmpeg's end of input fell less than half a frame after the
            // last frame's start, and the default rounding dropped the source's last frame.
            let mut end = len;
            if self.frame_rate > 0.0 {
                f.push(format!("fps={:.6}:eof_action=pass", self.frame_rate));
                end -= 0.25 / self.frame_rate;
            }
            f.push(format!("trim=end={end:.6}"));
        }
        f.join(",")
    }

    /// The audio filter chain: put the audio on the video's timeline (cut what comes before
    /// the first video frame, or put silence before audio that starts later), then pad with
    /// silence or cut to the video's length, so every segment carries audio from its first
    /// to its last frame.
    pub fn audio_filter(&self) -> String {
        let mut f = vec!["asetpts=PTS-STARTPTS".to_string()];
        let offset = self.audio_offset_seconds;
        if offset < -0.001 {
            f.push(format!("atrim=start={:.6}", -offset));
            f.push("asetpts=PTS-STARTPTS".into());
        } else if offset > 0.001 {
            f.push(format!("adelay=delays={:.0}:all=1", offset * 1000.0));
        }
        if self.duration_seconds > 0.0 {
            f.push(format!("apad=whole_dur={:.6}", self.duration_seconds));
            f.push(format!("atrim=end={:.6}", self.duration_seconds));
        }
        f.join(",")
    }
}

/// What to encode and where.
#[derive(Debug, Clone)]
pub struct TranscodeSpec {
    /// Source file on a local disk.
    pub input: PathBuf,
    /// Empty directory the segments, init segment and ffmpeg's media playlist go to.
    pub out_dir: PathBuf,
    /// The rendition to produce.
    pub rendition: Rendition,
    /// Segment duration, seconds.
    pub segment_seconds: u32,
    /// x264 preset.
    pub preset: String,
    /// Whether to map the source's audio stream.
    pub has_audio: bool,
    /// Which streams to read and how to line them up.
    pub map: InputMap,
}

/// Why a transcode failed. [`TranscodeError::is_permanent`] tells the caller whether a retry can
/// help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranscodeError {
    /// The source cannot be decoded: retrying gives the same result.
    #[error("the source cannot be decoded: {0}")]
    InvalidInput(String),
    /// ffmpeg failed for a reason that may pass (I/O, resources, a kill).
    #[error("ffmpeg failed: {0}")]
    Failed(String),
    /// [`Cancel::cancel`] was called.
    #[error("cancelled")]
    Cancelled,
    /// ffmpeg is not on PATH.
    #[error("ffmpeg is not installed or not on PATH (install it: apt-get install -y ffmpeg)")]
    NotInstalled,
}

impl TranscodeError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidInput(_))
    }
}

/// A handle that cancels a running transcode from another thread (kills ffmpeg with SIGKILL).
/// Cloning shares the handle.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    cancelled: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
}

impl Cancel {
    /// Cancel: mark cancelled and kill the ffmpeg process if one runs.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// The output half of every command that writes a rendition: ffmpeg's HLS muxer producing
/// CMAF (fMP4) segments `NNNNN.m4s`, `init.mp4` and a VOD media playlist in `out_dir`.
fn hls_output_args(out_dir: &Path, segment_seconds: u32) -> Vec<String> {
    let out = |name: &str| out_dir.join(name).to_string_lossy().into_owned();
    [
        "-f",
        "hls",
        "-hls_time",
        &segment_seconds.to_string(),
        "-hls_playlist_type",
        "vod",
        "-hls_segment_type",
        "fmp4",
        "-hls_fmp4_init_filename",
        INIT_NAME,
        "-hls_flags",
        "independent_segments",
        "-hls_segment_filename",
        &out("%05d.m4s"),
        &out(MEDIA_PLAYLIST_NAME),
    ]
    .map(String::from)
    .to_vec()
}

/// The video encoder settings every encode of a rendition uses (one pass or chunk): H.264 Main,
/// 4:2:0, the rendition's bitrate with a 7 % peak and 1.5 s buffer, keyframes forced at every
/// multiple of the segment duration with scene-cut detection off, and no B-frames. One
/// function, because chunks and renditions only line up if every encode uses exactly these.
///
/// Why no B-frames: ffmpeg's fMP4 HLS output shifts every video timestamp by the B-frame delay
/// (two frames, 67 ms at 30 fps, for x264's `veryfast`), so each segment's video started 53 ms
/// after its audio, over the 50 ms that issue 8 allows. The price is some compression
/// efficiency at a given bitrate; CMAF's negative composition offsets would win it back.
fn x264_args(r: &Rendition, preset: &str, segment_seconds: u32) -> Vec<String> {
    vec![
        "-pix_fmt".into(),
        "yuv420p".into(),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        preset.into(),
        "-profile:v".into(),
        "main".into(),
        "-b:v".into(),
        format!("{}k", r.video_kbps),
        "-maxrate".into(),
        format!("{}k", r.video_kbps * 107 / 100),
        "-bufsize".into(),
        format!("{}k", r.video_kbps * 3 / 2),
        "-force_key_frames".into(),
        format!("expr:gte(t,n_forced*{segment_seconds})"),
        "-sc_threshold".into(),
        "0".into(),
        "-bf".into(),
        "0".into(),
    ]
}

/// The ffmpeg arguments for `spec` (without the program name).
pub fn ffmpeg_args(spec: &TranscodeSpec) -> Vec<String> {
    let r = &spec.rendition;
    let seg = spec.segment_seconds;
    let mut a: Vec<String> = vec!["-hide_banner".into(), "-nostdin".into(), "-y".into()];
    let m = &spec.map;
    a.extend(["-i".into(), spec.input.to_string_lossy().into_owned()]);
    a.extend(["-map".into(), m.video()]);
    if spec.has_audio {
        a.extend(["-map".into(), m.audio()]);
    }
    a.extend(["-vf".to_string(), m.video_filter(r)]);
    a.extend(x264_args(r, &spec.preset, seg));
    if spec.has_audio {
        a.extend(aac_args(m, r.audio_kbps));
    }
    a.extend(hls_output_args(&spec.out_dir, seg));
    a
}

/// The chunks of a chunked encode: `(start, duration)` in seconds, each a whole number of
/// segments (`segments_per_chunk` x `segment_seconds`) except the last, so every chunk starts on
/// a segment boundary and keyframes stay aligned across chunks and renditions.
///
/// With the source's nominal `frame_rate` (frames per second; 0 when unknown) a chunk's length
/// is also a whole number of frames: 480 frames (16.016 s) at 30000/1001 fps rather than 16 s.
/// Each chunk is encoded at that constant rate from its first frame, so a length between two
/// frames made every chunk half a frame longer than its span and some chunks repeat the frame
/// that starts the next (two extra frames in 76 s of a 29.97 fps clip, and the video ahead of
/// the audio by up to a frame).
pub fn plan_chunks(
    duration_seconds: f64,
    segment_seconds: u32,
    segments_per_chunk: u32,
    frame_rate: f64,
) -> Vec<(f64, f64)> {
    let mut len = (segment_seconds.max(1) * segments_per_chunk.max(1)) as f64;
    if frame_rate > 0.0 && frame_rate.is_finite() {
        len = (len * frame_rate).round().max(1.0) / frame_rate;
    }
    let mut out = Vec::new();
    let mut start = 0.0;
    while start < duration_seconds - 1e-6 {
        let d = len.min(duration_seconds - start);
        out.push((start, d));
        start += len;
    }
    out
}

/// How much further than its span a chunk task reads, seconds: the frame after the span tells
/// the `fps` filter how long the span's last frame lasts, so a variable-rate source's gap at
/// the chunk's end is filled with that frame instead of leaving a hole at the boundary (which
/// ffmpeg's fMP4 muxer closes by pulling the next segment's timestamps early).
pub const CHUNK_LOOKAHEAD_SECONDS: f64 = 1.0;

/// How a chunk task finds its start in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSeek {
    /// ffmpeg's input seek (`-ss` before `-i`) through the container's index, then decoding
    /// from the keyframe before the start: fast, and exact on MP4, MOV, Matroska and WebM.
    Index,
    /// The same input seek, [`SEEK_BACK_SECONDS`] before the start, and the chunk's span cut
    /// from what it decodes (`trim`, on the seek's clock): for a container whose seek can land
    /// on the keyframe after its target (MPEG-TS has no index), landing a keyframe interval
    /// early costs that much more decoding, never a decode of everything before the chunk.
    /// Used when the index seek lost frames ([`chunk_is_short`], [`chunk_began_late`]).
    Earlier,
    /// The same input seek, `back_ms` milliseconds before the start: into the gap before the
    /// last keyframe at or before the start, which the job found by listing the source's
    /// keyframes ([`keyframe_back_ms`]). Decoding starts at that keyframe, so a chunk of a source
    /// without an index decodes at most one group of pictures before its span instead of
    /// [`SEEK_BACK_SECONDS`]. Followed by [`ChunkSeek::Earlier`] if it lost frames.
    Keyframe {
        /// How far before the chunk's seek point, milliseconds.
        back_ms: u32,
    },
    /// Decode from the start of the source and keep only the chunk's span (`trim`): slower
    /// the later the chunk (a whole-source decode per chunk), but right whatever the seek
    /// does. Used when the earlier seek lost frames too (keyframes further apart than
    /// [`SEEK_BACK_SECONDS`], or a seek that lands nowhere).
    Decode,
}

/// How far before a chunk's start [`ChunkSeek::Earlier`] seeks, seconds: more than the
/// keyframe interval of common encoders (x264's default is 250 frames, 10 s at 25 frames a
/// second; broadcast streams use 0.5 to 2 s).
pub const SEEK_BACK_SECONDS: f64 = 30.0;

/// The `-ss` of [`ChunkSeek::Earlier`] for a chunk that starts `start` seconds after the first
/// video frame, as written on the command line.
fn earlier_seek(m: &InputMap, start: f64) -> f64 {
    seek_point(m, start, ChunkSeek::Earlier)
}

/// How far before a chunk's seek point `seek` starts reading, seconds (0 for
/// [`ChunkSeek::Index`], and for [`ChunkSeek::Decode`], which has no `-ss`).
fn back_seconds(seek: ChunkSeek) -> f64 {
    match seek {
        ChunkSeek::Index | ChunkSeek::Decode => 0.0,
        ChunkSeek::Earlier => SEEK_BACK_SECONDS,
        ChunkSeek::Keyframe { back_ms } => f64::from(back_ms) / 1e3,
    }
}

/// The `-ss` of `seek` for a chunk that starts `start` seconds after the first video frame
/// (never before 0), as written on the command line; unused for [`ChunkSeek::Decode`].
fn seek_point(m: &InputMap, start: f64, seek: ChunkSeek) -> f64 {
    written((m.seek(start) - back_seconds(seek)).max(0.0))
}

/// How far before a keyframe [`keyframe_back_ms`] aims at most, seconds: ffmpeg's seek in an
/// MPEG-TS lands near its target by the timestamps it reads, not exactly.
pub const KEYFRAME_LEAD_SECONDS: f64 = 1.0;

/// The `back_ms` of the [`ChunkSeek::Keyframe`] for a chunk that starts `start` seconds after
/// the first video frame, from the source's video `keyframes` (seconds after the file's first
/// timestamp, the clock of `-ss`; ascending): a seek to just before the last keyframe at or
/// before the chunk's first frame, at most [`KEYFRAME_LEAD_SECONDS`] before it and never
/// before the middle of the gap from the keyframe before (nor after the chunk's seek point), so
/// that decoding starts at that keyframe even if the seek lands a little off. `None` for the
/// first chunk (it decodes from the start, which costs nothing more), and when no keyframe
/// precedes the chunk, the seek would be at 0 (see [`next_seek`]), or it would go back no
/// less than [`ChunkSeek::Earlier`] does.
pub fn keyframe_back_ms(m: &InputMap, start: f64, keyframes: &[f64]) -> Option<u32> {
    if start <= 0.0 {
        return None;
    }
    let target = written(m.seek(start));
    // A keyframe within the seek margin is the chunk's first frame: decoding can start there.
    let i = keyframes.partition_point(|&k| k <= target + m.seek_margin_seconds + 1e-6);
    let key = *keyframes.get(i.checked_sub(1)?)?;
    let before = i.checked_sub(2).map_or(0.0, |j| keyframes[j]);
    let at = ((before + key) / 2.0)
        .max(key - KEYFRAME_LEAD_SECONDS)
        .min(target);
    let back_ms = ((target - at) * 1e3).ceil();
    let usable = at > 0.0 && (0.0..SEEK_BACK_SECONDS * 1e3).contains(&back_ms);
    let back_ms = back_ms as u32;
    (usable && seek_point(m, start, ChunkSeek::Keyframe { back_ms }) > 0.0).then_some(back_ms)
}

/// The seek to encode a chunk with after `seek` lost frames, for a chunk that starts `start`
/// seconds after the first video frame: [`ChunkSeek::Earlier`] after [`ChunkSeek::Index`]
/// where the chunk starts more than [`SEEK_BACK_SECONDS`] in (nearer the start, a decode from
/// the start costs no more; and ffmpeg reads a file sought to 0 on the clock it uses without a
/// seek, where an MPEG-TS counts from its video's first timestamp, not the file's), else
/// [`ChunkSeek::Decode`]. `None` after a decode: nothing is left to try.
pub fn next_seek(seek: ChunkSeek, m: &InputMap, start: f64) -> Option<ChunkSeek> {
    match seek {
        ChunkSeek::Index | ChunkSeek::Keyframe { .. } if earlier_seek(m, start) > 0.0 => {
            Some(ChunkSeek::Earlier)
        }
        ChunkSeek::Index | ChunkSeek::Keyframe { .. } | ChunkSeek::Earlier => {
            Some(ChunkSeek::Decode)
        }
        ChunkSeek::Decode => None,
    }
}

/// The seek to encode a chunk that starts `start` seconds after the first video frame with
/// first: [`ChunkSeek::Index`], except in a container without an index
/// ([`InputMap::unindexed`]), where the index seek lands on the keyframe after nearly every
/// chunk's start and was encoded in vain before the retry ([`next_seek`] after it: the
/// earlier seek, or a decode from the start for a chunk within [`SEEK_BACK_SECONDS`] of it).
/// A 180 s MPEG-TS (keyframes every 10 s) encoded 21 chunks for its 12 that way. Where the job
/// found the keyframe before the chunk's start (`keyframe_back_ms`, as the function of that
/// name gives it), a source without an index starts with [`ChunkSeek::Keyframe`] instead.
pub fn first_seek(m: &InputMap, start: f64, keyframe_back_ms: Option<u32>) -> ChunkSeek {
    match keyframe_back_ms {
        _ if !m.unindexed => ChunkSeek::Index,
        Some(back_ms) => ChunkSeek::Keyframe { back_ms },
        None => next_seek(ChunkSeek::Index, m, start).unwrap_or(ChunkSeek::Index),
    }
}

/// `t` as ffmpeg reads it from the command line (6 decimals).
fn written(t: f64) -> f64 {
    (t * 1e6).round() / 1e6
}

/// Arguments to encode the video of one chunk for several renditions in one ffmpeg run, each
/// into its own file (MP4, no audio): the source is read and decoded once, its frames split to
/// one scaler and encoder per rendition (issue 11, P2: a chunk used to be decoded once per
/// rendition). `outs` pairs each rendition with its output file, in ladder order.
///
/// The frames: from `start` seconds after the first video frame for `duration` seconds (a
/// frame on the boundary falls in exactly one chunk: see [`InputMap::seek_margin_seconds`]),
/// timestamps restarted at zero (`setpts=PTS-STARTPTS`, or the packager would shift the first
/// chunk by a frame), keyframes forced every segment. ffmpeg counts `-ss` from the file's
/// first timestamp, so the video's own start is added; a [`ChunkSeek::Decode`] cut counts
/// from the first video frame (`InputMap::decoded_start`).
///
/// The decoded frames are also logged to `frame_log` (ffmpeg's `framecrc` format, one line per
/// frame, times in microseconds; [`read_frame_log`] reads it): the job checks that every
/// packet of the source decoded from these logs, instead of decoding the whole source once
/// more before the chunks (issue 10's damage check, folded into the chunks for issue 11, P2).
/// The log is taken after deinterlacing and the cut, before timestamps restart, with each
/// frame's own time (`-fps_mode passthrough`); frames are wrapped, not copied
/// (`wrapped_avframe`).
#[allow(clippy::too_many_arguments)]
pub fn chunk_args(
    input: &Path,
    outs: &[(&Path, &Rendition)],
    frame_log: &Path,
    start: f64,
    duration: f64,
    segment_seconds: u32,
    preset: &str,
    m: &InputMap,
    seek: ChunkSeek,
) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-y"]
        .map(String::from)
        .to_vec();
    let from = m.seek(start);
    let read = duration + CHUNK_LOOKAHEAD_SECONDS;
    let cut = match seek {
        ChunkSeek::Index => {
            a.extend([
                "-ss".into(),
                format!("{from:.6}"),
                "-t".into(),
                format!("{read:.6}"),
            ]);
            None
        }
        ChunkSeek::Earlier | ChunkSeek::Keyframe { .. } => {
            let ss = seek_point(m, start, seek);
            let at = written(from) - ss;
            a.extend([
                "-ss".into(),
                format!("{ss:.6}"),
                "-t".into(),
                format!("{:.6}", at + read),
            ]);
            Some(format!("trim=start={at:.6}:end={:.6}", at + read))
        }
        ChunkSeek::Decode => {
            let at = m.decoded_start(start);
            Some(format!(
                "setpts=PTS-STARTPTS,trim=start={at:.6}:end={:.6}",
                at + read
            ))
        }
    };
    a.extend(["-i".into(), input.to_string_lossy().into_owned()]);
    let n = outs.len();
    let decoded = m.decoded_chain(cut).map_or_else(String::new, |c| c + ",");
    let timed = m.timed_chain(Some(duration));
    let mut graph = format!(
        "[{}]{decoded}split=2[log][dec];[dec]{timed},split={n}",
        m.video(),
    );
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, (_, r)) in outs.iter().enumerate() {
        graph.push_str(&format!(";[s{i}]{}[v{i}]", scale_filter(r)));
    }
    a.extend(["-filter_complex".into(), graph]);
    for (i, (out, r)) in outs.iter().enumerate() {
        a.extend(["-map".into(), format!("[v{i}]")]);
        a.extend(x264_args(r, preset, segment_seconds));
        a.extend([
            "-an".into(),
            "-f".into(),
            "mp4".into(),
            out.to_string_lossy().into_owned(),
        ]);
    }
    a.extend(
        [
            "-map",
            "[log]",
            "-c:v",
            "wrapped_avframe",
            "-enc_time_base",
            "1/1000000",
            "-fps_mode",
            "passthrough",
            "-f",
            "framecrc",
        ]
        .map(String::from),
    );
    a.push(frame_log.to_string_lossy().into_owned());
    a
}

/// What to add to the times in a chunk's frame log ([`chunk_args`]) to count them from the
/// file's first timestamp, seconds: the chunk's seek (`-ss`, which ffmpeg subtracts from
/// every timestamp) for [`ChunkSeek::Index`], [`ChunkSeek::Earlier`] and
/// [`ChunkSeek::Keyframe`], the video's start for [`ChunkSeek::Decode`] (its clock restarts
/// at the first video frame).
pub fn frame_log_offset(m: &InputMap, start: f64, seek: ChunkSeek) -> f64 {
    match seek {
        ChunkSeek::Index | ChunkSeek::Earlier | ChunkSeek::Keyframe { .. } => {
            seek_point(m, start, seek)
        }
        ChunkSeek::Decode => written(m.video_start_seconds),
    }
}

/// Where a chunk's first frame belongs on the clock of its frame log (seconds; see
/// [`chunk_began_late`]): at the seek point for [`ChunkSeek::Index`], at the cut for the
/// others.
pub fn expected_first_frame(m: &InputMap, start: f64, seek: ChunkSeek) -> f64 {
    match seek {
        ChunkSeek::Index => 0.0,
        ChunkSeek::Earlier | ChunkSeek::Keyframe { .. } => {
            written(m.seek(start)) - seek_point(m, start, seek)
        }
        ChunkSeek::Decode => m.decoded_start(start),
    }
}

/// The frame times of a chunk's frame log (ffmpeg `framecrc` text: `#` header lines, then
/// `stream, pts, dts, duration, size, hash` with times in microseconds, as [`chunk_args`]
/// asks), plus `offset` seconds ([`frame_log_offset`]): seconds after the file's first
/// timestamp, in the log's order. Lines that do not parse are skipped.
pub fn read_frame_log(text: &str, offset: f64) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(1)?.trim().parse::<i64>().ok())
        .map(|us| offset + us as f64 / 1e6)
        .collect()
}

/// Whether a chunk holds too few frames for its span: fewer than 90 % of `duration` x
/// `frame_rate` (the source's average rate; ffmpeg's constant-rate output never has fewer),
/// less one. Such a chunk lost frames to its seek and is encoded again with the next one
/// ([`next_seek`]: [`ChunkSeek::Earlier`], then [`ChunkSeek::Decode`]).
pub fn chunk_is_short(frames: u64, duration: f64, frame_rate: f64) -> bool {
    let expected = duration * frame_rate;
    expected.is_finite() && (frames as f64) < (0.9 * expected - 1.0).max(1.0)
}

/// Whether a chunk began late: its first decoded frame, `late` seconds after where it
/// belongs (the first time of its frame log, read with no offset, less
/// [`expected_first_frame`]), comes more than two frame intervals at `frame_rate` (and at
/// least 0.1 s) after it. MPEG-TS has no index, and ffmpeg's seek there can land on the
/// keyframe after the chunk's start: the chunk then holds as many frames as its span (so
/// [`chunk_is_short`] passes it), but from seconds later, and the published picture jumps
/// ahead at the chunk's start and runs ahead of the sound to the end. No frame at all (`None`)
/// is left to [`chunk_is_short`]. Such a chunk is encoded again with [`ChunkSeek::Earlier`],
/// then [`ChunkSeek::Decode`].
pub fn chunk_began_late(late: Option<f64>, frame_rate: f64) -> bool {
    let interval = if frame_rate.is_finite() && frame_rate > 0.0 {
        1.0 / frame_rate
    } else {
        0.0
    };
    late.is_some_and(|t| t > (2.0 * interval).max(0.1))
}

/// A rendition's size with square pixels: the last filter of every encode.
fn scale_filter(r: &Rendition) -> String {
    format!("scale={}:{}:flags=bicubic,setsar=1", r.width, r.height)
}

/// The audio encoder settings of every rendition: AAC-LC, stereo (mono is doubled, 5.1 and
/// more are downmixed by ffmpeg's standard matrix), 48 kHz, after [`InputMap::audio_filter`].
fn aac_args(m: &InputMap, kbps: u32) -> Vec<String> {
    vec![
        "-af".into(),
        m.audio_filter(),
        "-c:a".into(),
        "aac".into(),
        "-ac".into(),
        "2".into(),
        "-ar".into(),
        "48000".into(),
        "-b:a".into(),
        format!("{}k", kbps.max(32)),
    ]
}

/// Arguments to encode the whole source's audio once (AAC-LC stereo 48 kHz) into `out` (M4A),
/// on the video's timeline and of the video's length (see [`InputMap::audio_filter`]).
pub fn audio_args(input: &Path, out: &Path, kbps: u32, m: &InputMap) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-y", "-i"]
        .map(String::from)
        .to_vec();
    a.push(input.to_string_lossy().into_owned());
    a.extend(["-map".into(), m.audio(), "-vn".into()]);
    a.extend(aac_args(m, kbps));
    a.extend([
        "-f".into(),
        "mp4".into(),
        out.to_string_lossy().into_owned(),
    ]);
    a
}

/// The concat demuxer's list for `chunks` (file, nominal duration in seconds; quotes escaped
/// as it requires). Every entry is written absolute: the demuxer resolves a relative entry
/// against the list's own folder, not the working directory (the cause of issue 8; paths are
/// absolute from config load on, this keeps the list right whatever a caller passes). A
/// positive duration is written as the entry's `duration`, so the next chunk starts exactly
/// where its span starts even when the source's frames leave a gap at the chunk's end
/// (variable frame rate); 0 lets the demuxer use the file's own length.
pub fn concat_list(chunks: &[(std::path::PathBuf, f64)]) -> String {
    chunks
        .iter()
        .map(|(f, duration)| {
            let f = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            let mut entry = format!("file '{}'\n", f.to_string_lossy().replace('\'', "'\\''"));
            if *duration > 0.0 {
                entry.push_str(&format!("duration {duration:.6}\n"));
            }
            entry
        })
        .collect()
}

/// Arguments to package encoded chunks (listed in `list`) and the audio into CMAF segments
/// with stream copy: no re-encoding, well under a second.
pub fn package_args(
    list: &Path,
    audio: Option<&Path>,
    out_dir: &Path,
    segment_seconds: u32,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-y",
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
    ]
    .map(String::from)
    .to_vec();
    a.push(list.to_string_lossy().into_owned());
    if let Some(audio) = audio {
        a.extend(["-i".into(), audio.to_string_lossy().into_owned()]);
    }
    a.extend(["-map".into(), "0:v:0".into()]);
    if audio.is_some() {
        a.extend(["-map".into(), "1:a:0".into()]);
    }
    a.extend(["-c".into(), "copy".into()]);
    a.extend(hls_output_args(out_dir, segment_seconds));
    a
}

fn is_invalid_input(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("invalid data found") || l.contains("moov atom not found")
}

/// What a failed ffmpeg run is reported as: its last error line; without one (ffmpeg did not
/// get as far as logging, as when its libraries are missing), its exit status (`exit status:
/// 127`) and the last line it wrote, if any.
fn failure_summary(errors: &[String], last_line: Option<&str>, status: &str) -> String {
    match (errors.last(), last_line) {
        (Some(error), _) => error.clone(),
        (None, Some(line)) => format!("{status}; its last line: {line}"),
        (None, None) => status.to_string(),
    }
}

/// Run the transcode to completion (blocking). `on_progress` gets the seconds of output written
/// so far, each time ffmpeg reports.
///
/// Errors: see [`TranscodeError`]. A cancelled run returns `Cancelled` whatever ffmpeg said.
pub fn run_blocking(
    spec: &TranscodeSpec,
    cancel: &Cancel,
    on_progress: impl FnMut(f64),
) -> Result<(), TranscodeError> {
    std::fs::create_dir_all(&spec.out_dir)
        .map_err(|e| TranscodeError::Failed(format!("cannot create {:?}: {e}", spec.out_dir)))?;
    run_args(ffmpeg_args(spec), cancel, on_progress)
}

/// Run ffmpeg with `args` to completion (blocking); progress and errors as [`run_blocking`].
pub fn run_args(
    args: Vec<String>,
    cancel: &Cancel,
    mut on_progress: impl FnMut(f64),
) -> Result<(), TranscodeError> {
    if cancel.is_cancelled() {
        return Err(TranscodeError::Cancelled);
    }
    let mut child = FfmpegCommand::new()
        .args(args)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TranscodeError::NotInstalled,
            _ => TranscodeError::Failed(format!("cannot start ffmpeg: {e}")),
        })?;
    cancel.pid.store(child.as_inner().id(), Ordering::SeqCst);
    // A cancel between spawn and storing the pid would be missed: check again.
    if cancel.is_cancelled() {
        let _ = child.kill();
    }
    let mut errors: Vec<String> = Vec::new();
    let mut last_line: Option<String> = None;
    let events = child
        .iter()
        .map_err(|e| TranscodeError::Failed(format!("cannot read ffmpeg output: {e}")))?;
    for event in events {
        match event {
            FfmpegEvent::Progress(p) => {
                if let Some(t) = FfmpegTimeDuration::from_str(&p.time) {
                    on_progress(t.as_seconds().max(0.0));
                }
            }
            FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) if errors.len() < 20 => {
                errors.push(line.trim().to_string());
            }
            FfmpegEvent::Log(_, line) if !line.trim().is_empty() => {
                last_line = Some(line.trim().to_string());
            }
            _ => {}
        }
    }
    let status = child.wait();
    cancel.pid.store(0, Ordering::SeqCst);
    if cancel.is_cancelled() {
        return Err(TranscodeError::Cancelled);
    }
    let status = status.map_err(|e| TranscodeError::Failed(format!("waiting for ffmpeg: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let summary = failure_summary(&errors, last_line.as_deref(), &status.to_string());
    if errors.iter().any(|l| is_invalid_input(l)) {
        Err(TranscodeError::InvalidInput(summary))
    } else {
        Err(TranscodeError::Failed(summary))
    }
}

/// Whether `ffmpeg` and `ffprobe` run. `Err` carries a message naming the fix.
pub fn check_tools() -> Result<(), String> {
    for tool in ["ffmpeg", "ffprobe"] {
        let ok = std::process::Command::new(tool)
            .arg("-version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "{tool} was not found on PATH. reel uses the system ffmpeg: install it with \
                 `apt-get install -y ffmpeg` (Debian/Ubuntu) or `brew install ffmpeg` (macOS)"
            ));
        }
    }
    Ok(())
}

/// List the files ffmpeg produced in `dir`: the init segment and the segments, in order.
pub fn output_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "m4s"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(audio: bool) -> TranscodeSpec {
        TranscodeSpec {
            input: "/in/source".into(),
            out_dir: "/out".into(),
            rendition: Rendition {
                name: "360p".into(),
                width: 640,
                height: 360,
                video_kbps: 1000,
                audio_kbps: 96,
            },
            segment_seconds: 4,
            preset: "veryfast".into(),
            has_audio: audio,
            map: InputMap::default(),
        }
    }

    #[test]
    fn arguments_force_aligned_keyframes_and_fmp4_segments() {
        let a = ffmpeg_args(&spec(true)).join(" ");
        assert!(
            a.contains("-force_key_frames expr:gte(t,n_forced*4)"),
            "{a}"
        );
        assert!(a.contains("-sc_threshold 0 -bf 0"), "{a}");
        assert!(a.contains("-hls_segment_type fmp4"), "{a}");
        assert!(a.contains("scale=640:360"), "{a}");
        assert!(a.contains("-b:v 1000k"), "{a}");
        assert!(
            a.contains("-map 0:a:0") && a.contains("-c:a aac -ac 2 -ar 48000 -b:a 96k"),
            "{a}"
        );
        assert!(a.ends_with("/out/index.m3u8"), "{a}");
    }

    #[test]
    fn no_audio_maps_no_audio() {
        let a = ffmpeg_args(&spec(false)).join(" ");
        assert!(!a.contains("0:a:0") && !a.contains("aac"), "{a}");
    }

    #[test]
    fn chunks_are_whole_segments_and_cover_the_source() {
        assert_eq!(
            plan_chunks(30.0, 2, 8, 0.0),
            vec![(0.0, 16.0), (16.0, 14.0)]
        );
        assert_eq!(plan_chunks(16.0, 4, 4, 25.0), vec![(0.0, 16.0)]);
        let c = plan_chunks(61.5, 4, 4, 30.0);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|(s, _)| s % 4.0 == 0.0));
        assert!((c.iter().map(|x| x.1).sum::<f64>() - 61.5).abs() < 1e-9);
        // 30000/1001 fps: every chunk but the last is 480 frames, and starts on a frame.
        let ntsc = 30000.0 / 1001.0;
        let c = plan_chunks(76.076, 4, 4, ntsc);
        assert_eq!(c.len(), 5);
        for (i, (start, len)) in c.iter().enumerate() {
            let first = start * ntsc;
            assert!(
                (first - (480 * i) as f64).abs() < 1e-6,
                "chunk {i} starts at frame {first}"
            );
            if i < 4 {
                assert!(
                    (len * ntsc - 480.0).abs() < 1e-6,
                    "chunk {i}: {} frames",
                    len * ntsc
                );
            }
        }
        assert!((c.iter().map(|x| x.1).sum::<f64>() - 76.076).abs() < 1e-9);
    }

    /// The arguments of a chunk of the 360p rendition of `/s`, joined.
    fn chunk(m: &InputMap, start: f64, len: f64, seg: u32, seek: ChunkSeek) -> String {
        let r = spec(true).rendition;
        chunk_args(
            Path::new("/s"),
            &[(Path::new("/c.mp4"), &r)],
            Path::new("/f.crc"),
            start,
            len,
            seg,
            "veryfast",
            m,
            seek,
        )
        .join(" ")
    }

    /// Issue 11, P2: one decode of the chunk feeds every rendition: one input, one split of
    /// the shared chain into a scaler per rendition, and each output with its own encoder
    /// settings and file, in ladder order.
    #[test]
    fn a_chunk_decodes_once_for_every_rendition() {
        let top = spec(true).rendition;
        let low = Rendition {
            name: "180p".into(),
            width: 320,
            height: 180,
            video_kbps: 250,
            audio_kbps: 48,
        };
        let a = chunk_args(
            Path::new("/s"),
            &[(Path::new("/360.mp4"), &top), (Path::new("/180.mp4"), &low)],
            Path::new("/f.crc"),
            0.0,
            16.0,
            4,
            "veryfast",
            &InputMap::default(),
            ChunkSeek::Index,
        )
        .join(" ");
        assert_eq!(a.matches("-i ").count(), 1, "{a}");
        assert!(
            a.contains(
                "[0:v:0]split=2[log][dec];\
                 [dec]setpts=PTS-STARTPTS,trim=end=16.000000,split=2[s0][s1];\
                 [s0]scale=640:360:flags=bicubic,setsar=1[v0];\
                 [s1]scale=320:180:flags=bicubic,setsar=1[v1]"
            ),
            "{a}"
        );
        // The same decode logs its frames, each at its own time, wrapped rather than copied:
        // the job's damage check reads this instead of decoding the source again.
        assert!(
            a.ends_with(
                "-map [log] -c:v wrapped_avframe -enc_time_base 1/1000000 \
                 -fps_mode passthrough -f framecrc /f.crc"
            ),
            "{a}"
        );
        let first = a.find("-map [v0]").unwrap();
        let second = a.find("-map [v1]").unwrap();
        assert!(first < a.find("/360.mp4").unwrap() && a.find("/360.mp4").unwrap() < second);
        assert!(
            a[first..second].contains(&format!("-b:v {}k", top.video_kbps)),
            "{a}"
        );
        assert!(
            a[second..].contains("-b:v 250k") && a.contains("/180.mp4 -map [log]"),
            "{a}"
        );
    }

    /// The frame log as ffmpeg 5.1 writes it for [`chunk_args`] (`framecrc`, microseconds).
    #[test]
    fn a_frame_log_reads_as_seconds_from_the_file_start() {
        let log = "#software: Lavf59.27.100\n#tb 0: 1/1000000\n#media_type 0: video\n\
                   #codec_id 0: wrapped_avframe\n#dimensions 0: 1920x1080\n#sar 0: 1/1\n\
                   0,          0,          0,    33333,      472, 0x588a16c3\n\
                   0,      33333,      33333,    33333,      472, 0x409d1646\n\
                   0,      66667,      66667,    33333,      472, 0x7bdd13c3\n\
                   garbage\n";
        let t = read_frame_log(log, 16.0);
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(
            (t[0] - 16.0).abs() < 1e-9 && (t[2] - 16.066667).abs() < 1e-9,
            "{t:?}"
        );
        assert!(read_frame_log("", 1.0).is_empty());
    }

    #[test]
    fn chunk_and_package_arguments() {
        let a = chunk(&InputMap::default(), 16.0, 16.0, 4, ChunkSeek::Index);
        assert!(
            a.contains("-ss 16.000000 -t 17.000000 -i /s")
                && a.contains(
                    "-filter_complex [0:v:0]split=2[log][dec];\
                     [dec]setpts=PTS-STARTPTS,trim=end=16.000000,split=1[s0];\
                     [s0]scale=640:360:flags=bicubic,setsar=1[v0] -map [v0]"
                ),
            "{a}"
        );
        assert!(
            a.contains("-an") && a.contains("expr:gte(t,n_forced*4)"),
            "{a}"
        );
        let p = package_args(
            Path::new("/l.txt"),
            Some(Path::new("/a.m4a")),
            Path::new("/o"),
            4,
        )
        .join(" ");
        assert!(
            p.contains("-f concat -safe 0 -i /l.txt -i /a.m4a -map 0:v:0 -map 1:a:0 -c copy"),
            "{p}"
        );
        let list = concat_list(&[("/x/it's.mp4".into(), 0.0), ("/x/b.mp4".into(), 4.0)]);
        assert_eq!(
            list,
            "file '/x/it'\\''s.mp4'\nfile '/x/b.mp4'\nduration 4.000000\n"
        );
        let relative = concat_list(&[("chunks/c.mp4".into(), 0.0)]);
        assert!(relative.starts_with("file '/"), "{relative}");
    }

    #[test]
    fn the_input_map_puts_every_task_on_the_first_video_frame_timeline() {
        let source = SourceInfo {
            video_stream: Some(2),
            audio_stream: Some(4),
            video_start_seconds: 0.5,
            audio_offset_seconds: -0.5,
            duration_seconds: 10.0,
            interlaced: true,
            ..SourceInfo::example()
        };
        let m = InputMap::for_source(&source);
        let c = chunk(&m, 4.0, 4.0, 2, ChunkSeek::Index);
        // 4 s after a video that starts at 0.5 s, less half a frame at 30 fps; one second read
        // past the span, the span cut after the constant-rate conversion.
        assert!(
            c.contains("-ss 4.483333 -t 5.000000 -i /s -filter_complex [0:2]"),
            "{c}"
        );
        assert!(
            c.contains("[0:2]yadif=mode=send_frame:deint=all,split=2[log][dec];[dec]setpts=PTS-STARTPTS,fps=30.000000:eof_action=pass,trim=end=3.991667,split=1[s0];[s0]scale=640:360"),
            "{c}"
        );
        let a = audio_args(Path::new("/s"), Path::new("/a.m4a"), 96, &m).join(" ");
        assert!(
            a.contains("-map 0:4 -vn -af asetpts=PTS-STARTPTS,atrim=start=0.500000,asetpts=PTS-STARTPTS,apad=whole_dur=10.000000,atrim=end=10.000000"),
            "{a}"
        );
        let d = chunk(&m, 4.0, 4.0, 2, ChunkSeek::Decode);
        assert!(
            d.contains("-i /s -filter_complex [0:2]yadif=mode=send_frame:deint=all,setpts=PTS-STARTPTS,trim=start=3.983333:end=8.983333,split=2[log][dec];[dec]setpts=PTS-STARTPTS,fps=30.000000:eof_action=pass,trim=end=3.991667,split=1"),
            "{d}"
        );
        assert!(!d.contains("-ss"), "{d}");
        // Landing well before the start: -ss 30 s earlier (never before 0), the span cut on
        // the seek's clock.
        let e = chunk(&m, 40.0, 4.0, 2, ChunkSeek::Earlier);
        assert!(
            e.contains("-ss 10.483333 -t 35.000000 -i /s -filter_complex [0:2]yadif=mode=send_frame:deint=all,trim=start=30.000000:end=35.000000,split=2[log][dec]"),
            "{e}"
        );
        assert_eq!(
            next_seek(ChunkSeek::Index, &m, 40.0),
            Some(ChunkSeek::Earlier)
        );
        assert_eq!(
            next_seek(ChunkSeek::Index, &m, 4.0),
            Some(ChunkSeek::Decode),
            "no room to land earlier"
        );
        assert_eq!(
            next_seek(ChunkSeek::Earlier, &m, 40.0),
            Some(ChunkSeek::Decode)
        );
        assert_eq!(next_seek(ChunkSeek::Decode, &m, 40.0), None);
        // A container with an index is sought through it first; one without starts where the
        // index seek would have sent it after losing frames.
        assert_eq!(first_seek(&m, 40.0, None), ChunkSeek::Index);
        let ts = InputMap {
            unindexed: true,
            ..m.clone()
        };
        assert_eq!(first_seek(&ts, 40.0, None), ChunkSeek::Earlier);
        assert_eq!(first_seek(&ts, 4.0, None), ChunkSeek::Decode);
        assert_eq!(first_seek(&ts, 0.0, None), ChunkSeek::Decode);
        // The frame log's times count from the seek with `-ss`, from the first video frame
        // without; a chunk's first frame belongs at the seek point or at the cut.
        assert_eq!(frame_log_offset(&m, 4.0, ChunkSeek::Index), 4.483333);
        assert_eq!(frame_log_offset(&m, 40.0, ChunkSeek::Earlier), 10.483333);
        assert_eq!(frame_log_offset(&m, 4.0, ChunkSeek::Decode), 0.5);
        assert_eq!(expected_first_frame(&m, 4.0, ChunkSeek::Index), 0.0);
        assert!((expected_first_frame(&m, 40.0, ChunkSeek::Earlier) - 30.0).abs() < 1e-9);
        assert!((expected_first_frame(&m, 4.0, ChunkSeek::Decode) - 3.983333).abs() < 1e-6);
        assert_eq!(frame_log_offset(&m, 0.0, ChunkSeek::Index), 0.5);
        // The keyframe seek: into the gap before the last keyframe at or before the seek
        // point (40.483333), at most a second before it; the span cut on its clock.
        let every_10s: Vec<f64> = (0..5).map(|i| 3.0 + 10.0 * f64::from(i)).collect();
        assert_eq!(keyframe_back_ms(&m, 40.0, &every_10s), Some(8_484));
        let k = ChunkSeek::Keyframe { back_ms: 8_484 };
        let e = chunk(&m, 40.0, 4.0, 2, k);
        assert!(
            e.contains("-ss 31.999333 -t 13.484000 -i /s -filter_complex [0:2]yadif=mode=send_frame:deint=all,trim=start=8.484000:end=13.484000,split=2[log][dec]"),
            "{e}"
        );
        assert_eq!(frame_log_offset(&m, 40.0, k), 31.999333);
        assert!((expected_first_frame(&m, 40.0, k) - 8.484).abs() < 1e-9);
        // A keyframe on the chunk's first frame (40.5, within the seek margin) is the one.
        let on_start: Vec<f64> = (0..6).map(|i| 0.5 + 10.0 * f64::from(i)).collect();
        assert_eq!(keyframe_back_ms(&m, 40.0, &on_start), Some(984));
        // Keyframes half a second apart: the middle of the gap before the keyframe; every
        // frame a keyframe: the seek point itself.
        let every_half: Vec<f64> = (0..100).map(|i| 0.5 * f64::from(i)).collect();
        assert_eq!(keyframe_back_ms(&m, 40.0, &every_half), Some(234));
        let every_frame: Vec<f64> = (0..1500).map(|i| 0.5 + f64::from(i) / 30.0).collect();
        assert_eq!(keyframe_back_ms(&m, 40.0, &every_frame), Some(0));
        // The first keyframe: the middle of the gap from 0.
        assert_eq!(keyframe_back_ms(&m, 4.0, &[0.5]), Some(4_234));
        // None before the seek point, none that would seek to 0, none further back than the
        // earlier seek.
        assert_eq!(keyframe_back_ms(&m, 40.0, &[41.0, 50.0]), None);
        assert_eq!(keyframe_back_ms(&m, 40.0, &[]), None);
        assert_eq!(keyframe_back_ms(&m, 0.0, &[0.5]), None, "the first chunk");
        assert_eq!(keyframe_back_ms(&m, 4.0, &[0.0]), None);
        assert_eq!(keyframe_back_ms(&m, 40.0, &[0.5, 10.0]), None);
        // Only a source without an index starts with it; after it, the earlier seek, then the
        // decode from the start where there is no room to land earlier.
        assert_eq!(first_seek(&m, 40.0, Some(8_484)), ChunkSeek::Index);
        assert_eq!(first_seek(&ts, 40.0, Some(8_484)), k);
        assert_eq!(next_seek(k, &m, 40.0), Some(ChunkSeek::Earlier));
        assert_eq!(
            next_seek(ChunkSeek::Keyframe { back_ms: 3_000 }, &m, 4.0),
            Some(ChunkSeek::Decode)
        );
        assert!(chunk_is_short(0, 4.0, 25.0));
        assert!(chunk_is_short(60, 4.0, 25.0));
        assert!(!chunk_is_short(100, 4.0, 25.0));
        assert!(
            !chunk_is_short(73, 4.0, 18.27),
            "variable rate: the average"
        );
        assert!(!chunk_is_short(1, 0.04, 25.0), "a one-frame last chunk");
        // What ffmpeg's seek in an MPEG-TS with a keyframe every 3 s gave for a chunk at 4 s:
        // 125 frames for 5 s of reading, the first 2.01 s after the seek point.
        assert!(!chunk_is_short(125, 4.0, 25.0));
        assert!(chunk_began_late(Some(2.01), 25.0));
        assert!(
            !chunk_began_late(Some(0.01), 25.0),
            "on time, within the margin"
        );
        assert!(!chunk_began_late(Some(0.07), 25.0), "within two frames");
        assert!(!chunk_began_late(Some(0.09), 25.0), "never under 0.1 s");
        assert!(chunk_began_late(Some(0.5), 25.0));
        assert!(!chunk_began_late(Some(0.15), 12.5), "two frames at 12.5/s");
        assert!(
            !chunk_began_late(None, 25.0),
            "no frame: chunk_is_short's to judge"
        );
        // Audio that starts after the video gets silence first.
        let late = InputMap {
            audio_offset_seconds: 0.25,
            ..m.clone()
        };
        assert!(late.audio_filter().contains("adelay=delays=250:all=1"));
        // One pass: the same maps and filters.
        let one = ffmpeg_args(&TranscodeSpec {
            map: m,
            ..spec(true)
        })
        .join(" ");
        assert!(one.contains("-map 0:2 -map 0:4 -vf yadif"), "{one}");
        assert!(one.contains("atrim=start=0.500000"), "{one}");
        // The default map is what older tasks did.
        let old = InputMap::default();
        assert_eq!(old.audio_filter(), "asetpts=PTS-STARTPTS");
        assert!(ffmpeg_args(&spec(true))
            .join(" ")
            .contains("-map 0:v:0 -map 0:a:0"));
    }

    #[test]
    fn invalid_data_is_permanent_other_failures_are_not() {
        assert!(TranscodeError::InvalidInput("x".into()).is_permanent());
        assert!(!TranscodeError::Failed("x".into()).is_permanent());
        assert!(is_invalid_input(
            "/x: Invalid data found when processing input"
        ));
    }

    /// A failed run names its last error line; an ffmpeg that could not start its work (its
    /// libraries missing: no error line, exit 127) is named by its status and its last words,
    /// once ("exit status exit status: 127" was what an operator saw).
    #[test]
    fn a_failure_is_summed_up_by_its_error_or_its_status_and_last_line() {
        let errors = vec!["first".to_string(), "Conversion failed!".to_string()];
        assert_eq!(
            failure_summary(&errors, Some("a warning"), "exit status: 1"),
            "Conversion failed!"
        );
        let missing = "ffmpeg: error while loading shared libraries: libavcodec.so.59";
        assert_eq!(
            failure_summary(&[], Some(missing), "exit status: 127"),
            format!("exit status: 127; its last line: {missing}")
        );
        assert_eq!(
            failure_summary(&[], None, "exit status: 127"),
            "exit status: 127"
        );
    }
}
