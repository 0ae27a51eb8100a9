//! The format corpus (issue 8): files of the kinds people upload, generated with ffmpeg inside
//! the test (nothing large is committed), each uploaded to one node and checked to end `ready`
//! and playable with the right geometry, or `failed` with a sentence a person can act on.
//!
//! The node runs the default ladder with 2 s segments and 4 s chunks, so every entry longer than
//! 4 s is encoded in chunks (the path that joins chunks and the separately encoded audio) and
//! the shorter ones in one pass. Every rendition of every ready entry then goes through
//! [`check_rendition`]: init segment + segments decode cleanly, audio and video start within
//! 50 ms of each other in every segment. Per entry, as its kind asks: the frame count of a
//! constant-frame-rate source is kept, the picture is upright (a rotated phone clip compared
//! with the source turned by hand), interlaced video comes out progressive, surround and mono
//! audio come out stereo, audio that starts before the first video frame stays in sync
//! (a tone that starts at a known instant is heard at that instant), and where chunks are
//! cut from an MPEG-TS (no index) every frame shows the source's frame of the same number.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;

use crate::helpers::*;

/// What an entry must end as.
#[derive(Debug, Clone, Default)]
struct Expect {
    /// Size of the highest rendition, pixels.
    top: (u64, u64),
    /// How many renditions the default ladder gives it.
    renditions: usize,
    /// Length of the source's video, seconds.
    duration: f64,
    /// For a constant-frame-rate source: the ffprobe stream specifier of the video stream
    /// reel must use, whose frame count every rendition keeps.
    frames_of: Option<&'static str>,
    /// Whether the renditions carry (stereo) audio.
    audio: bool,
    /// Interlaced source: the renditions must be progressive (ffmpeg's idet).
    deinterlaced: bool,
    /// Rotated source: compare with the unrotated file turned counter-clockwise by hand.
    upright_from: Option<&'static str>,
    /// A tone starts this many seconds after the first video frame.
    tone_at: Option<f64>,
    /// Every frame of the highest rendition shows the source's frame of the same number
    /// (SSIM of each pair): no frame lost, repeated or moved at a chunk's edge.
    same_frames: bool,
}

/// One corpus entry: how to make it and what it must end as.
struct Entry {
    name: &'static str,
    /// File name extension (tells ffmpeg the container).
    ext: &'static str,
    /// ffmpeg commands, run in order; `{o}` is the entry's file, `{d}` the corpus directory.
    make: Vec<String>,
    expect: Expect,
}

/// `testsrc2` of a size, rate and length, with a 440 Hz tone, as ffmpeg input arguments.
fn av(size: &str, rate: u32, seconds: f64) -> String {
    format!(
        "-f lavfi -i testsrc2=size={size}:rate={rate} -f lavfi -i sine=frequency=440:sample_rate=48000 -t {seconds}"
    )
}

const X264: &str = "-c:v libx264 -preset ultrafast";

/// The steps of a recording cut out of a broadcast: an MPEG-TS named `name` in the corpus
/// directory, `seconds` long, a keyframe every 3 s and a tone from `tone_from` seconds on; then
/// its packets from `cut_at` seconds on, copied as they are (`-copyinkf`: from inside a group
/// of pictures, not from the next keyframe).
fn broadcast_cut(name: &str, seconds: f64, tone_from: f64, cut_at: f64) -> Vec<String> {
    vec![
        format!(
            "-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i aevalsrc=if(gte(t\\,{tone_from})\\,sin(2*PI*440*t)\\,0):s=48000 -t {seconds} {X264} -g 75 -c:a aac -f mpegts {{d}}/{name}.ts"
        ),
        format!("-ss {cut_at} -i {{d}}/{name}.ts -c copy -copyinkf -f mpegts {{o}}"),
    ]
}

fn corpus() -> Vec<Entry> {
    let e = |name, ext, make: &[String], expect| Entry {
        name,
        ext,
        make: make.to_vec(),
        expect,
    };
    let small = |duration, frames: bool| Expect {
        top: (320, 240),
        renditions: 1,
        duration,
        frames_of: frames.then_some("v:0"),
        audio: true,
        ..Default::default()
    };
    vec![
        e(
            "mkv-h264-aac",
            "mkv",
            &[format!("{} {X264} -c:a aac {{o}}", av("320x240", 25, 9.0))],
            small(9.0, true),
        ),
        e(
            "webm-vp9-opus",
            "webm",
            &[format!(
                "{} -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 300k -c:a libopus {{o}}",
                av("320x240", 25, 5.0)
            )],
            small(5.0, true),
        ),
        e(
            "mov-hevc-10bit",
            "mov",
            &[format!(
                "{} -c:v libx265 -preset ultrafast -pix_fmt yuv420p10le -x265-params log-level=error -tag:v hvc1 -c:a aac {{o}}",
                av("320x240", 25, 5.0)
            )],
            small(5.0, true),
        ),
        e(
            // MPEG-TS starts its clock at 1.4 s, not 0.
            "mpegts-h264-mp2",
            "ts",
            &[format!("{} {X264} -c:a mp2 -f mpegts {{o}}", av("320x240", 25, 9.0))],
            small(9.0, true),
        ),
        e(
            // A keyframe every 3 s: seeking to a chunk's start in MPEG-TS (no index) lands on
            // the next keyframe, seconds late, with as many frames as the chunk needs; so its
            // chunks are encoded from a seek 30 s earlier (the chunks past 30 s) or a decode
            // from the start, cut to their span. With AAC the video starts 21 ms after the
            // file's first timestamp (with MP2 10 ms), more than the chunk's seek margin.
            "mpegts-keyframes-3s",
            "ts",
            &[format!("{} {X264} -g 75 -c:a aac -f mpegts {{o}}", av("320x240", 25, 40.0))],
            Expect {
                same_frames: true,
                ..small(40.0, true)
            },
        ),
        e(
            // A recording cut out of a broadcast at any byte: it starts 0.56 s (14 frames)
            // before its first keyframe, in packets no decoder shows. The video begins at the
            // keyframe, the source's 6.0 s, and the tone that starts at the source's 9.0 s is
            // heard 3.0 s in. Before, the chunks decoded from the start put that keyframe at
            // 0 s, 0.56 s early, and the next chunk repeated 0.56 s of picture.
            "mpegts-cut-mid-gop",
            "ts",
            &broadcast_cut("broadcast", 20.0, 9.0, 5.5),
            Expect {
                same_frames: true,
                tone_at: Some(3.0),
                ..small(14.0, true)
            },
        ),
        e(
            // The same, shorter than a chunk: encoded in one pass per rendition, and judged by
            // validation's whole decode, which skips the packets before the first keyframe.
            "mpegts-cut-mid-gop-short",
            "ts",
            &broadcast_cut("broadcast-short", 6.5, 5.0, 2.5),
            Expect {
                same_frames: true,
                tone_at: Some(2.0),
                ..small(3.5, true)
            },
        ),
        e(
            // MPEG-TS with AAC remuxed to MP4 keeps the video 21 ms after the audio: the last
            // chunk lost the source's last frame to the `fps` filter's rounding at the end.
            "mp4-remuxed-from-ts",
            "mp4",
            &[
                format!("{} {X264} -c:a aac -f mpegts {{d}}/remux.ts", av("320x240", 25, 9.0)),
                "-i {d}/remux.ts -c copy {o}".into(),
            ],
            Expect {
                same_frames: true,
                ..small(9.0, true)
            },
        ),
        e(
            "avi-mpeg4-mp3",
            "avi",
            &[format!("{} -c:v mpeg4 -q:v 5 -c:a libmp3lame {{o}}", av("320x240", 25, 5.0))],
            small(5.0, true),
        ),
        e(
            "portrait-1080x1920",
            "mp4",
            &[format!("{} {X264} -c:a aac {{o}}", av("1080x1920", 30, 2.0))],
            Expect {
                top: (1080, 1920),
                renditions: 5,
                duration: 2.0,
                frames_of: Some("v:0"),
                audio: true,
                ..Default::default()
            },
        ),
        e(
            // A phone clip: stored 1920x1080, displayed portrait through a 90 degree rotation.
            "rotated-90",
            "mp4",
            &[
                format!("{} {X264} -c:a aac {{d}}/rotated-90-unrotated.mp4", av("1920x1080", 30, 2.0)),
                "-i {d}/rotated-90-unrotated.mp4 -c copy -metadata:s:v:0 rotate=90 {o}".into(),
            ],
            Expect {
                top: (1080, 1920),
                renditions: 5,
                duration: 2.0,
                frames_of: Some("v:0"),
                audio: true,
                upright_from: Some("rotated-90-unrotated.mp4"),
                ..Default::default()
            },
        ),
        e(
            "odd-853x479",
            "mp4",
            &[format!("{} {X264} -c:a aac {{o}}", av("853x479", 25, 3.0))],
            Expect {
                top: (642, 360),
                renditions: 2,
                duration: 3.0,
                frames_of: Some("v:0"),
                audio: true,
                ..Default::default()
            },
        ),
        e(
            // Variable frame rate: 6 frames of every 10 kept, with their own timestamps.
            "variable-frame-rate",
            "mp4",
            &[format!(
                "-f lavfi -i testsrc2=size=320x240:rate=30,select='lt(mod(n\\,10)\\,6)' -f lavfi -i sine=frequency=440:sample_rate=48000 -t 9 -vsync vfr {X264} -c:a aac {{o}}"
            )],
            small(9.0 - 4.0 / 30.0, false),
        ),
        e(
            "fps-60",
            "mp4",
            &[format!("{} {X264} -c:a aac {{o}}", av("320x240", 60, 9.0))],
            small(9.0, true),
        ),
        e(
            "fps-50",
            "mp4",
            &[format!("{} {X264} -c:a aac {{o}}", av("320x240", 50, 3.0))],
            small(3.0, true),
        ),
        e(
            // 50 fields/s woven into 25 interlaced frames/s, top field first.
            "interlaced",
            "mp4",
            &[format!(
                "-f lavfi -i testsrc2=size=384x288:rate=50,tinterlace=mode=interleave_top,setfield=tff -f lavfi -i sine=frequency=440:sample_rate=48000 -t 5 {X264} -flags +ilme+ildct -x264-params tff=1 -c:a aac {{o}}"
            )],
            Expect {
                top: (320, 240),
                renditions: 1,
                duration: 5.0,
                frames_of: Some("v:0"),
                audio: true,
                deinterlaced: true,
                ..Default::default()
            },
        ),
        e(
            "audio-5.1",
            "mp4",
            &[format!("{} {X264} -c:a aac -ac 6 {{o}}", av("320x240", 25, 3.0))],
            small(3.0, true),
        ),
        e(
            "audio-mono",
            "mp4",
            &[format!("{} {X264} -c:a aac -ac 1 {{o}}", av("320x240", 25, 3.0))],
            small(3.0, true),
        ),
        e(
            // 5 s of video, 8 s of audio: the renditions are 5 s long.
            "audio-longer",
            "mp4",
            &[format!(
                "-t 5 -f lavfi -i testsrc2=size=320x240:rate=25 -t 8 -f lavfi -i sine=frequency=440:sample_rate=48000 {X264} -c:a aac {{o}}"
            )],
            small(5.0, true),
        ),
        e(
            // 9 s of video, 4 s of audio: silence after it, audio in every segment.
            "audio-shorter",
            "mp4",
            &[format!(
                "-t 9 -f lavfi -i testsrc2=size=320x240:rate=25 -t 4 -f lavfi -i sine=frequency=440:sample_rate=48000 {X264} -c:a aac {{o}}"
            )],
            small(9.0, true),
        ),
        e(
            // The first video frame at 0.5 s, the audio from 0 (an edit list): the audio is
            // silent until 6.5 s of the file, so 6.0 s after the first video frame.
            "video-starts-late",
            "mp4",
            &[
                format!("-f lavfi -i testsrc2=size=320x240:rate=25 -t 9 {X264} {{d}}/late-v.mp4"),
                "-f lavfi -i aevalsrc=if(gte(t\\,6.5)\\,sin(2*PI*440*t)\\,0):s=48000:d=9.5 -c:a aac {d}/late-a.m4a".into(),
                "-itsoffset 0.5 -i {d}/late-v.mp4 -i {d}/late-a.m4a -map 0:v -map 1:a -c copy {o}".into(),
            ],
            Expect {
                tone_at: Some(6.0),
                ..small(9.0, true)
            },
        ),
        e(
            "uhd-4k-2s",
            "mp4",
            &[format!("{} {X264} -c:a aac {{o}}", av("3840x2160", 30, 2.0))],
            Expect {
                top: (1920, 1080),
                renditions: 5,
                duration: 2.0,
                frames_of: Some("v:0"),
                audio: true,
                ..Default::default()
            },
        ),
        e(
            "tiny-64x64",
            "mp4",
            &[format!("-f lavfi -i testsrc2=size=64x64:rate=25 -t 2 {X264} {{o}}")],
            Expect {
                top: (64, 64),
                renditions: 1,
                duration: 2.0,
                frames_of: Some("v:0"),
                ..Default::default()
            },
        ),
        e(
            "half-second",
            "mp4",
            &[format!("{} {X264} -c:a aac {{o}}", av("320x240", 25, 0.5))],
            small(0.5, true),
        ),
        e(
            // Two video streams; the second is marked default and is the one to encode.
            "two-video-streams",
            "mkv",
            &[format!(
                "-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i testsrc=size=640x360:rate=25 -f lavfi -i sine=frequency=440:sample_rate=48000 -t 3 -map 0:v -map 1:v -map 2:a {X264} -c:a aac -disposition:v:0 0 -disposition:v:1 default {{o}}"
            )],
            Expect {
                top: (640, 360),
                renditions: 2,
                duration: 3.0,
                frames_of: Some("1"),
                audio: true,
                ..Default::default()
            },
        ),
    ]
}

/// Make an entry's file (once per test process).
async fn make(entry: &Entry, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.{}", entry.name, entry.ext));
    for step in &entry.make {
        let step = step
            .replace("{o}", out.to_str().unwrap())
            .replace("{d}", dir.to_str().unwrap());
        let args: Vec<&str> = step.split_whitespace().collect();
        let mut all = vec!["-v", "error"];
        all.extend(args);
        ffmpeg_out(&all).await;
    }
    out
}

/// Counts of ffmpeg's idet multi-frame detection: (interlaced frames, progressive frames).
async fn idet(file: &Path) -> (u64, u64) {
    let err = ffmpeg_out(&[
        "-i",
        file.to_str().unwrap(),
        "-vf",
        "idet",
        "-f",
        "null",
        "-",
    ])
    .await;
    let line = err
        .lines()
        .find(|l| l.contains("Multi frame detection"))
        .unwrap_or_else(|| panic!("no idet line in {err}"));
    let count = |what: &str| -> u64 {
        let rest = &line[line.find(what).unwrap() + what.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (count("TFF:") + count("BFF:"), count("Progressive:"))
}

/// SSIM (0..1, 1 = same picture) of `a` against `b` turned by `filter` and scaled to `size`,
/// both counted from their first frame: the whole files' figure, and each frame's in order
/// (a frame of `a` against the frame of the same number in `b`).
async fn ssim_frames(a: &Path, b: &Path, filter: &str, size: (u64, u64)) -> (f64, Vec<f64>) {
    let stats = a.with_extension("ssim.txt");
    let graph = format!(
        "[1:v]{filter},scale={}:{}:flags=bicubic,setsar=1,setpts=PTS-STARTPTS[ref];\
         [0:v]setpts=PTS-STARTPTS[out];[out][ref]ssim=stats_file={}",
        size.0,
        size.1,
        stats.to_str().unwrap()
    );
    let err = ffmpeg_out(&[
        "-i",
        a.to_str().unwrap(),
        "-noautorotate",
        "-i",
        b.to_str().unwrap(),
        "-filter_complex",
        &graph,
        "-f",
        "null",
        "-",
    ])
    .await;
    let all = |text: &str| -> Option<f64> {
        text.split("All:")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let whole = all(err.rsplit("Parsed_ssim").next().unwrap())
        .unwrap_or_else(|| panic!("no SSIM in {err}"));
    let text = std::fs::read_to_string(&stats).unwrap();
    let frames: Vec<f64> = text.lines().filter_map(all).collect();
    assert!(!frames.is_empty(), "no frame compared: {text}");
    (whole, frames)
}

/// SSIM of `a` against `b` turned by `filter` and scaled to `size` ([`ssim_frames`]).
async fn ssim(a: &Path, b: &Path, filter: &str, size: (u64, u64)) -> f64 {
    ssim_frames(a, b, filter, size).await.0
}

/// The lowest SSIM of a frame of `a` against the frame of the same number in `b` scaled to
/// `size` ([`ssim_frames`]).
async fn lowest_frame_ssim(a: &Path, b: &Path, size: (u64, u64)) -> f64 {
    let (_, frames) = ssim_frames(a, b, "null", size).await;
    frames.into_iter().fold(f64::INFINITY, f64::min)
}

/// When the first tone is heard, seconds from the start of `file` (ffmpeg's silencedetect).
async fn tone_start(file: &Path) -> f64 {
    let err = ffmpeg_out(&[
        "-i",
        file.to_str().unwrap(),
        "-vn",
        "-af",
        "silencedetect=n=-40dB:d=0.3",
        "-f",
        "null",
        "-",
    ])
    .await;
    let at = err
        .split("silence_end: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no end of silence in {err}"));
    at.split_whitespace().next().unwrap().parse().unwrap()
}

/// The frames a constant-frame-rate source holds: the count its container declares (an AVI
/// declares a skipped frame that players show as a repeat, and so does reel), else the count
/// decoded.
async fn source_frames(source: &Path, stream: &str) -> u64 {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "stream=nb_frames", "-of", "csv=p=0"])
        .arg(source)
        .output()
        .await
        .unwrap();
    match String::from_utf8_lossy(&out.stdout).trim().parse::<u64>() {
        Ok(n) if n > 0 => n,
        _ => count_frames(source, stream).await,
    }
}

/// Every check of one entry; the first failing one panics with its reason.
async fn check(entry: &Entry, source: &Path, base: &str, id: &str, dir: &Path) {
    let x = &entry.expect;
    // Decoded once (issue 11, P2): a chunked source's damage check is answered by the frames
    // its chunks decoded, with no second decode of the whole source, in every format.
    let (_, record) = get_json(&format!("{base}/videos/{id}")).await;
    if record["source"]["duration_seconds"].as_f64().unwrap() > 4.0 {
        let events = event_kinds(base, id).await;
        let checks = event_fields(&events, "damage_checked", "detail");
        assert!(
            checks.len() == 1
                && checks[0].starts_with("all ")
                && checks[0].ends_with("decoded by the chunks"),
            "the damage check: {checks:?}"
        );
    }
    let facts = check_all_renditions(base, id, dir).await;
    assert_eq!(facts.len(), x.renditions, "renditions: {facts:#?}");
    let top = &facts[0];
    assert_eq!(
        (top.width, top.height),
        x.top,
        "size of the highest rendition"
    );
    let portrait = x.top.1 > x.top.0;
    let aspect = x.top.0 as f64 / x.top.1 as f64;
    let source_frames = match x.frames_of {
        Some(stream) => Some(source_frames(source, stream).await),
        None => None,
    };
    for f in &facts {
        assert!(
            f.width % 2 == 0 && f.height % 2 == 0,
            "{}: {}x{} is not even",
            f.name,
            f.width,
            f.height
        );
        assert_eq!(f.height > f.width, portrait, "{}: orientation", f.name);
        let a = f.width as f64 / f.height as f64;
        assert!(
            (a / aspect - 1.0).abs() < 0.015,
            "{}: aspect {a:.3}, source {aspect:.3}",
            f.name
        );
        // The ladder counts the short side: "720p" is 720 pixels on the short side.
        let short: u64 = f.name.trim_end_matches('p').parse().unwrap();
        assert_eq!(f.width.min(f.height), short, "{}: short side", f.name);
        let segment = 2.0;
        assert!(
            (f.duration - x.duration).abs() <= segment,
            "{}: {} s of segments for {} s of video",
            f.name,
            f.duration,
            x.duration
        );
        assert_eq!(
            f.segments,
            (x.duration / segment).ceil() as usize,
            "{}: segment count",
            f.name
        );
        assert_eq!(
            f.audio_channels,
            x.audio.then_some(2),
            "{}: stereo audio when the source has audio",
            f.name
        );
        if let Some(n) = source_frames {
            assert_eq!(f.frames, n, "{}: frames kept", f.name);
        }
    }
    if x.deinterlaced {
        let (interlaced, _) = idet(source).await;
        assert!(interlaced > 0, "the source is interlaced");
        let (interlaced, progressive) = idet(&top.file).await;
        assert!(
            progressive > 4 * interlaced,
            "deinterlaced: idet counts {interlaced} interlaced, {progressive} progressive"
        );
    }
    if let Some(name) = x.upright_from {
        let unrotated = source.parent().unwrap().join(name);
        let upright = ssim(&top.file, &unrotated, "transpose=cclock", x.top).await;
        let stretched = ssim(&top.file, &unrotated, "null", x.top).await;
        assert!(
            upright > 0.9 && upright > stretched + 0.2,
            "upright: SSIM {upright:.3} against the source turned, {stretched:.3} stretched"
        );
    }
    if x.same_frames {
        let lowest = lowest_frame_ssim(&top.file, source, x.top).await;
        assert!(
            lowest > 0.95,
            "a frame of the highest rendition differs from the source's (SSIM {lowest:.3})"
        );
    }
    if let Some(at) = x.tone_at {
        for f in &facts {
            let heard = tone_start(&f.file).await;
            assert!(
                (heard - at).abs() < 0.05,
                "{}: the tone is heard at {heard:.3} s, the video shows it at {at} s",
                f.name
            );
        }
    }
}

/// The keyframes of an MPEG-TS (no index) are listed from the file's start, and a chunk that
/// starts between two of them seeks to just before the earlier one, a second or less before
/// it, instead of 30 s back: a 12 s TS with a keyframe every 3 s.
#[tokio::test]
async fn a_ts_chunk_seeks_to_just_before_the_keyframe_before_its_start() {
    use reel::media::{probe, transcode};
    let dir = tempfile::tempdir().unwrap();
    let entry = Entry {
        name: "gop3",
        ext: "ts",
        make: vec![format!(
            "{} {X264} -g 75 -c:a aac -f mpegts {{o}}",
            av("320x240", 25, 12.0)
        )],
        expect: Expect::default(),
    };
    let ts = make(&entry, dir.path()).await;
    let timeout = Duration::from_secs(60);
    let source = probe::probe(&ts, timeout).await.unwrap();
    let m = transcode::InputMap::for_source(&source);
    assert!(m.unindexed, "{source:?}");
    let keys = probe::keyframe_times(&ts, source.video_stream, timeout)
        .await
        .unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for (i, k) in keys.iter().enumerate() {
        let want = m.video_start_seconds + 3.0 * i as f64;
        assert!(
            (k - want).abs() < 0.01,
            "keyframe {i} at {k}, not {want}: {keys:?}"
        );
    }
    // A chunk from 8 s: its keyframe is the source's 6 s, so the seek goes 2 s back and one
    // second more, not 30 s.
    let back = transcode::keyframe_back_ms(&m, 8.0, &keys).expect("a keyframe before 8 s");
    assert!((2_950..=3_010).contains(&back), "{back} ms");
    assert_eq!(
        transcode::first_seek(&m, 8.0, Some(back)),
        transcode::ChunkSeek::Keyframe { back_ms: back }
    );
    // On a keyframe: it is the one; before the first: none.
    let on = transcode::keyframe_back_ms(&m, 6.0, &keys).unwrap();
    assert!((950..=1_010).contains(&on), "{on} ms");
    assert_eq!(transcode::keyframe_back_ms(&m, 2.0, &keys[1..]), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_in_the_corpus_ends_ready_and_plays_right() {
    let dir = tempfile::tempdir().unwrap();
    let corpus_dir = dir.path().join("corpus");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&corpus_dir).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut config = test_config(&dir.path().join("node"));
    config.processing.ladder = reel::config::default_ladder();
    config.processing.chunk_seconds = 4;
    let node = start(config).await;
    let base = node.url();
    // Make and upload one entry after another, so processing overlaps making the next.
    let mut uploaded = Vec::new();
    for entry in corpus() {
        let file = make(&entry, &corpus_dir).await;
        let (status, v) = upload(&base, &file).await;
        assert_eq!(status, 202, "{}: {v}", entry.name);
        let id = v["video_id"].as_str().unwrap().to_string();
        uploaded.push((entry, file, id));
    }
    let results = join_all(uploaded.iter().map(|(entry, file, id)| {
        let (base, work) = (base.clone(), work.clone());
        async move {
            let v = wait_terminal(&base, id, Duration::from_secs(900)).await;
            if v["state"] != "ready" {
                return Err(format!("{}: {}", entry.name, v));
            }
            let (entry_name, file, id) = (entry.name, file.clone(), id.clone());
            // A panicking check names its entry instead of ending the whole test.
            let entry = corpus().into_iter().find(|e| e.name == entry_name).unwrap();
            tokio::spawn(async move { check(&entry, &file, &base, &id, &work).await })
                .await
                .map_err(|e| {
                    let msg = e
                        .try_into_panic()
                        .ok()
                        .and_then(|p| {
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        })
                        .unwrap_or_default();
                    format!("{entry_name}: {msg}")
                })
        }
    }))
    .await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {} entries failed:\n{}",
        failures.len(),
        uploaded.len(),
        failures.join("\n")
    );
}
