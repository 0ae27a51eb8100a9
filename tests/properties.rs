//! Property tests (proptest) for the parsers a client's bytes reach: request headers (tus
//! `Upload-Metadata`, `Reel-Forwarded-By`, `Range`), ids and object names, and playlists.
//! Each asserts that no input panics and that what is accepted is safe or round-trips.
//!
//! `cargo test --test properties` runs 256 cases each; for a long run,
//! `PROPTEST_CASES=200000 cargo test --release --test properties` (figures in
//! `docs/security.md`).

use proptest::prelude::*;
use reel::http::range::{answer, RangeAnswer};
use reel::storage::keys;
use reel::streaming::session::SessionId;
use warp::http::{HeaderMap, HeaderValue, Method};

/// Strings a hostile client could send: any characters, weighted towards the ones parsers
/// split on.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ ,;=/.:a-z0-9*%-]{0,64}",
        "(bytes=)?[0-9 ,-]{0,40}",
    ]
}

proptest! {
    #[test]
    fn range_answers_stay_inside_the_object(header in hostile(), len in 0u64..100_000) {
        match answer(Some(&header), len) {
            RangeAnswer::Part { start, end } => prop_assert!(start <= end && end < len),
            RangeAnswer::Whole | RangeAnswer::Unsatisfiable => {}
        }
    }

    #[test]
    fn a_single_range_is_served_as_asked(start in 0u64..2000, n in 1u64..2000, len in 1u64..3000) {
        let h = format!("bytes={start}-{}", start + n - 1);
        let got = answer(Some(&h), len);
        if start < len {
            prop_assert_eq!(got, RangeAnswer::Part { start, end: (start + n - 1).min(len - 1) });
        } else {
            prop_assert_eq!(got, RangeAnswer::Unsatisfiable);
        }
    }

    #[test]
    fn upload_metadata_never_panics_and_round_trips(
        text in hostile(),
        pairs in proptest::collection::btree_map("[a-z][a-z0-9_]{0,12}", any::<Vec<u8>>(), 0..8),
    ) {
        let _ = reel::http::tus::parse_metadata(&text);
        use base64::Engine as _;
        let encoded: Vec<String> = pairs
            .iter()
            .map(|(k, v)| if v.is_empty() {
                k.clone()
            } else {
                format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v))
            })
            .collect();
        let parsed = reel::http::tus::parse_metadata(&encoded.join(","));
        let parsed = parsed.map_err(TestCaseError::fail)?;
        let want: Vec<(String, Vec<u8>)> = pairs.into_iter().collect();
        let mut got = parsed;
        got.sort();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn accepted_ids_cannot_leave_their_prefix(text in hostile()) {
        for ok in [
            keys::valid_video_id(&text),
            keys::valid_upload_id(&text),
            keys::valid_rendition_name(&text),
            keys::valid_node_id(&text),
            SessionId::parse(&text).is_some(),
        ] {
            if ok {
                prop_assert!(!text.contains('/') && !text.contains("..") && !text.contains('\\'));
                prop_assert!(!text.is_empty() && text.is_ascii());
            }
        }
        if let Some(file) = keys::parse_rendition_file(&text) {
            // Only the three names a rendition serves, spelled exactly.
            let canonical = match file {
                keys::RenditionFile::Init => "init.mp4".to_string(),
                keys::RenditionFile::MediaPlaylist => "index.m3u8".to_string(),
                keys::RenditionFile::Segment(k) => format!("{k:05}.m4s"),
            };
            prop_assert_eq!(canonical, text);
        }
    }

    #[test]
    fn a_forwarding_header_nobody_signed_is_refused(value in hostile(), path in "/[a-z0-9/._-]{0,40}") {
        let mut headers = HeaderMap::new();
        let Ok(v) = HeaderValue::from_str(&value) else { return Ok(()) };
        headers.insert("reel-forwarded-by", v);
        let now = 1_700_000_000_000;
        prop_assert!(reel::http::proxy::check(Some("cookie"), "node-1", &Method::PATCH, &path, &headers, now).is_err());
        prop_assert!(reel::http::proxy::check(None, "node-1", &Method::GET, &path, &headers, now).is_err());
        // A signature over another path does not carry over.
        let signed = reel::http::proxy::sign("cookie", "node-2", &Method::GET, "/elsewhere", &HeaderMap::new(), now);
        headers.insert("reel-forwarded-by", HeaderValue::from_str(&signed).unwrap());
        if path != "/elsewhere" {
            prop_assert!(reel::http::proxy::check(Some("cookie"), "node-1", &Method::GET, &path, &headers, now).is_err());
        }
        prop_assert!(reel::http::proxy::check(Some("cookie"), "node-1", &Method::GET, "/elsewhere", &headers, now).is_ok());
    }

    #[test]
    fn playlist_readers_never_panic_and_refuse_uris_that_leave_the_session(
        bytes in any::<Vec<u8>>(),
        text in hostile(),
        dir in "(\\.\\.|[a-z]{1,8}|https?:/|)",
        name in "[a-z0-9]{1,8}\\.m4s",
    ) {
        let _ = reel::media::playlist::read_durations(&bytes);
        let _ = reel::streaming::playlist::check_media_relative(&bytes);
        let with_header = format!("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:{text},\n{text}\n");
        let _ = reel::media::playlist::read_durations(with_header.as_bytes());
        let _ = reel::streaming::playlist::check_media_relative(with_header.as_bytes());
        let escaping = format!("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\n{dir}/{name}\n#EXT-X-ENDLIST\n");
        prop_assert!(reel::streaming::playlist::check_media_relative(escaping.as_bytes()).is_err());
    }

    #[test]
    fn media_playlists_round_trip(durations in proptest::collection::vec(0.04f64..12.0, 1..200)) {
        use reel::media::ladder::Rendition;
        use reel::media::playlist::{media_playlist, RenditionOutput, SegmentInfo};
        let out = RenditionOutput {
            rendition: Rendition { name: "240p".into(), width: 426, height: 240, video_kbps: 400, audio_kbps: 64 },
            codecs: "avc1.42c01e,mp4a.40.2".into(),
            frame_rate: 30.0,
            init_bytes: 800,
            segments: durations.iter().map(|d| SegmentInfo { duration_seconds: *d, bytes: 1000 }).collect(),
            dir: String::new(),
        };
        let text = media_playlist(&out);
        let read = reel::media::playlist::read_durations(text.as_bytes()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(read.len(), durations.len());
        for (a, b) in read.iter().zip(&durations) {
            prop_assert!((a - b).abs() < 1e-3, "{} vs {}", a, b);
        }
        prop_assert_eq!(reel::streaming::playlist::check_media_relative(text.as_bytes()), Ok(durations.len()));
    }
}
