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

use crate::media::ladder::Rendition;
use crate::media::playlist::{INIT_NAME, MEDIA_PLAYLIST_NAME};

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
    /// Whether to map the source's first audio stream.
    pub has_audio: bool,
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
/// multiple of the segment duration with scene-cut detection off. One function, because chunks
/// and renditions only line up if every encode uses exactly these.
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
    ]
}

/// The ffmpeg arguments for `spec` (without the program name).
pub fn ffmpeg_args(spec: &TranscodeSpec) -> Vec<String> {
    let r = &spec.rendition;
    let seg = spec.segment_seconds;
    let mut a: Vec<String> = vec!["-hide_banner".into(), "-nostdin".into(), "-y".into()];
    a.extend(["-i".into(), spec.input.to_string_lossy().into_owned()]);
    a.extend(["-map".into(), "0:v:0".into()]);
    if spec.has_audio {
        a.extend(["-map".into(), "0:a:0".into()]);
    }
    a.extend([
        "-vf".to_string(),
        format!("scale={}:{}:flags=bicubic,setsar=1", r.width, r.height),
    ]);
    a.extend(x264_args(r, &spec.preset, seg));
    if spec.has_audio {
        a.extend(
            [
                "-c:a",
                "aac",
                "-ac",
                "2",
                "-ar",
                "48000",
                "-b:a",
                &format!("{}k", r.audio_kbps.max(32)),
            ]
            .map(String::from),
        );
    }
    a.extend(hls_output_args(&spec.out_dir, seg));
    a
}

/// The chunks of a chunked encode: `(start, duration)` in seconds, each a whole number of
/// segments (`segments_per_chunk` x `segment_seconds`) except the last, so every chunk starts on
/// a segment boundary and keyframes stay aligned across chunks and renditions.
pub fn plan_chunks(
    duration_seconds: f64,
    segment_seconds: u32,
    segments_per_chunk: u32,
) -> Vec<(f64, f64)> {
    let len = (segment_seconds.max(1) * segments_per_chunk.max(1)) as f64;
    let mut out = Vec::new();
    let mut start = 0.0;
    while start < duration_seconds - 1e-6 {
        let d = len.min(duration_seconds - start);
        out.push((start, d));
        start += len;
    }
    out
}

/// Arguments to encode the video of one chunk of a rendition into `out` (MP4, no audio):
/// frame-accurate input seek to `start`, timestamps restarted at zero (`setpts=PTS-STARTPTS`, or
/// the packager would shift the first chunk by a frame), keyframes forced every segment.
pub fn chunk_args(
    input: &Path,
    out: &Path,
    r: &Rendition,
    start: f64,
    duration: f64,
    segment_seconds: u32,
    preset: &str,
) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-y", "-ss"]
        .map(String::from)
        .to_vec();
    a.push(format!("{start:.3}"));
    a.extend([
        "-t".into(),
        format!("{duration:.3}"),
        "-i".into(),
        input.to_string_lossy().into_owned(),
    ]);
    a.extend([
        "-map".to_string(),
        "0:v:0".into(),
        "-vf".into(),
        format!(
            "setpts=PTS-STARTPTS,scale={}:{}:flags=bicubic,setsar=1",
            r.width, r.height
        ),
    ]);
    a.extend(x264_args(r, preset, segment_seconds));
    a.extend([
        "-an".into(),
        "-f".into(),
        "mp4".into(),
        out.to_string_lossy().into_owned(),
    ]);
    a
}

/// Arguments to encode the whole source's audio once (AAC-LC stereo 48 kHz) into `out` (M4A).
pub fn audio_args(input: &Path, out: &Path, kbps: u32) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-y", "-i"]
        .map(String::from)
        .to_vec();
    a.push(input.to_string_lossy().into_owned());
    a.extend(
        [
            "-map", "0:a:0", "-vn", "-c:a", "aac", "-ac", "2", "-ar", "48000", "-b:a",
        ]
        .map(String::from),
    );
    a.push(format!("{}k", kbps.max(32)));
    a.extend([
        "-f".into(),
        "mp4".into(),
        out.to_string_lossy().into_owned(),
    ]);
    a
}

/// The concat demuxer's list for `files` (quotes escaped as it requires).
pub fn concat_list(files: &[std::path::PathBuf]) -> String {
    files
        .iter()
        .map(|f| format!("file '{}'\n", f.to_string_lossy().replace('\'', "'\\''")))
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
            FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) => {
                if errors.len() < 20 {
                    errors.push(line.trim().to_string());
                }
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
    let summary = errors
        .last()
        .cloned()
        .unwrap_or_else(|| format!("exit status {status}"));
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
        }
    }

    #[test]
    fn arguments_force_aligned_keyframes_and_fmp4_segments() {
        let a = ffmpeg_args(&spec(true)).join(" ");
        assert!(
            a.contains("-force_key_frames expr:gte(t,n_forced*4)"),
            "{a}"
        );
        assert!(a.contains("-sc_threshold 0"), "{a}");
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
        assert_eq!(plan_chunks(30.0, 2, 8), vec![(0.0, 16.0), (16.0, 14.0)]);
        assert_eq!(plan_chunks(16.0, 4, 4), vec![(0.0, 16.0)]);
        let c = plan_chunks(61.5, 4, 4);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|(s, _)| s % 4.0 == 0.0));
        assert!((c.iter().map(|x| x.1).sum::<f64>() - 61.5).abs() < 1e-9);
    }

    #[test]
    fn chunk_and_package_arguments() {
        let r = spec(true).rendition;
        let a = chunk_args(
            Path::new("/s"),
            Path::new("/c.mp4"),
            &r,
            16.0,
            16.0,
            4,
            "veryfast",
        )
        .join(" ");
        assert!(
            a.contains("-ss 16.000 -t 16.000 -i /s")
                && a.contains("setpts=PTS-STARTPTS,scale=640:360"),
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
        let list = concat_list(&["/x/it's.mp4".into()]);
        assert_eq!(list, "file '/x/it'\\''s.mp4'\n");
    }

    #[test]
    fn invalid_data_is_permanent_other_failures_are_not() {
        assert!(TranscodeError::InvalidInput("x".into()).is_permanent());
        assert!(!TranscodeError::Failed("x".into()).is_permanent());
        assert!(is_invalid_input(
            "/x: Invalid data found when processing input"
        ));
    }
}
