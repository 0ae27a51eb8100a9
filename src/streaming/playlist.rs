//! Rewriting playlists onto session paths (RFC 8216 section 4.3.4.2, relative URIs resolve
//! against the playlist's own URI, section 4.1).
//!
//! The stored multivariant playlist names its variant streams `240p/index.m3u8`. For a session
//! it is answered with `s/{session}/240p/index.m3u8`, which a player resolves against
//! `/videos/{id}/master.m3u8` to `/videos/{id}/s/{session}/240p/index.m3u8`. The media
//! playlist's URIs (`init.mp4`, `00000.m4s`) are relative too, so they resolve under the
//! session path without a rewrite: every later request of the player carries the session id.

/// The session prefix of a relative URI: `s/{session}/`.
pub fn session_prefix(session: &str) -> String {
    format!("s/{session}/")
}

fn is_relative(uri: &str) -> bool {
    !uri.is_empty() && !uri.starts_with('/') && !uri.contains("://")
}

/// Rewrite every relative URI of a multivariant playlist (variant streams, I-frame streams,
/// renditions of `EXT-X-MEDIA`) under `s/{session}/`. Parsed and written with `m3u8-rs`.
///
/// Errors: the text is not a multivariant playlist.
pub fn rewrite_multivariant(playlist: &[u8], session: &str) -> Result<Vec<u8>, String> {
    let mut p = match m3u8_rs::parse_playlist_res(playlist) {
        Ok(m3u8_rs::Playlist::MasterPlaylist(p)) => p,
        Ok(_) => return Err("a media playlist where a multivariant playlist was expected".into()),
        Err(e) => return Err(format!("unparsable multivariant playlist: {e}")),
    };
    let prefix = session_prefix(session);
    for v in &mut p.variants {
        if is_relative(&v.uri) {
            v.uri = format!("{prefix}{}", v.uri);
        }
    }
    for m in &mut p.alternatives {
        if let Some(uri) = m.uri.as_mut().filter(|u| is_relative(u)) {
            *uri = format!("{prefix}{uri}");
        }
    }
    let mut out = Vec::new();
    p.write_to(&mut out)
        .map_err(|e| format!("cannot write playlist: {e}"))?;
    Ok(out)
}

/// Check that a media playlist's segment and init URIs are plain relative names, so they stay
/// under the session path the player fetched the playlist from. Returns the number of segments.
///
/// Errors: not a media playlist, or a URI that would leave the session path.
pub fn check_media_relative(playlist: &[u8]) -> Result<usize, String> {
    match m3u8_rs::parse_playlist_res(playlist) {
        Ok(m3u8_rs::Playlist::MediaPlaylist(p)) => {
            for s in &p.segments {
                let uris =
                    std::iter::once(s.uri.as_str()).chain(s.map.iter().map(|m| m.uri.as_str()));
                for u in uris {
                    if !is_relative(u) || u.contains('/') {
                        return Err(format!("segment URI {u:?} would leave the session path"));
                    }
                }
            }
            Ok(p.segments.len())
        }
        Ok(_) => Err("a multivariant playlist where a media playlist was expected".into()),
        Err(e) => Err(format!("unparsable media playlist: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
#EXT-X-STREAM-INF:BANDWIDTH=500000,RESOLUTION=320x240\n240p/index.m3u8\n\
#EXT-X-STREAM-INF:BANDWIDTH=200000,RESOLUTION=240x180\n180p/index.m3u8\n";

    #[test]
    fn variant_uris_move_under_the_session_and_stay_relative() {
        let out = rewrite_multivariant(MASTER.as_bytes(), "n1-0123456789abcdef").unwrap();
        let p = match m3u8_rs::parse_playlist_res(&out).unwrap() {
            m3u8_rs::Playlist::MasterPlaylist(p) => p,
            _ => panic!(),
        };
        let uris: Vec<_> = p.variants.iter().map(|v| v.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "s/n1-0123456789abcdef/240p/index.m3u8",
                "s/n1-0123456789abcdef/180p/index.m3u8"
            ]
        );
        assert_eq!(p.variants[0].bandwidth, 500000);
        let base = url::Url::parse("http://h/videos/v/master.m3u8").unwrap();
        assert_eq!(
            base.join(uris[0]).unwrap().path(),
            "/videos/v/s/n1-0123456789abcdef/240p/index.m3u8"
        );
        assert!(rewrite_multivariant(b"#EXTM3U\n#EXTINF:2,\na.m4s\n", "x").is_err());
    }

    #[test]
    fn media_playlists_with_plain_names_need_no_rewrite() {
        let media =
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n\
#EXTINF:2,\n00000.m4s\n#EXTINF:2,\n00001.m4s\n#EXT-X-ENDLIST\n";
        assert_eq!(check_media_relative(media.as_bytes()), Ok(2));
        let bad = media.replace("00001.m4s", "/elsewhere/00001.m4s");
        assert!(check_media_relative(bad.as_bytes()).is_err());
    }
}
