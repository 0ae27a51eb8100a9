//! What a `Range` request header asks of an object of known length (RFC 9110 section 14), as a
//! plain function. Parsing is `http-range-header`'s; reel decides what to answer.

/// The answer to a `Range` header for an object of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// `200` with the whole object: no `Range`, a malformed one (ignored, RFC 9110 section
    /// 14.2), or several ranges (the whole object is a valid answer there; reel does not send
    /// `multipart/byteranges`).
    Whole,
    /// `206` with bytes `start..=end` (inclusive, `end < len`) and `Content-Range`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// `416` with `Content-Range: bytes */{len}`: no range overlaps the object, a range's last
    /// byte comes before its first (an invalid range-spec, which RFC 9110 section 14.2 lets a
    /// server reject), or only zero-length suffixes are asked (`bytes=-0`, section 14.1.2).
    Unsatisfiable,
}

/// Decide the answer to `header` (the `Range` value, if any) for an object of `len` bytes.
pub fn answer(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(text) = header else {
        return RangeAnswer::Whole;
    };
    if zero_suffix_only(text) {
        return RangeAnswer::Unsatisfiable;
    }
    let Ok(parsed) = http_range_header::parse_range_header(text) else {
        return RangeAnswer::Whole;
    };
    match parsed.validate(len) {
        Ok(ranges) if ranges.len() == 1 => RangeAnswer::Part {
            start: *ranges[0].start(),
            end: *ranges[0].end(),
        },
        Ok(_) => RangeAnswer::Whole,
        Err(_) => RangeAnswer::Unsatisfiable,
    }
}

/// Whether a `Range` header asks only for zero-length suffixes (`bytes=-0`, `bytes=-0, -00`).
fn zero_suffix_only(text: &str) -> bool {
    let Some(specs) = text.trim().strip_prefix("bytes=") else {
        return false;
    };
    specs.split(',').all(|spec| {
        spec.trim()
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9110_cases() {
        assert_eq!(answer(None, 10), RangeAnswer::Whole);
        assert_eq!(
            answer(Some("bytes=0-3"), 10),
            RangeAnswer::Part { start: 0, end: 3 }
        );
        assert_eq!(
            answer(Some("bytes=5-"), 10),
            RangeAnswer::Part { start: 5, end: 9 }
        );
        assert_eq!(
            answer(Some("bytes=-3"), 10),
            RangeAnswer::Part { start: 7, end: 9 }
        );
        assert_eq!(
            answer(Some("bytes=4-100"), 10),
            RangeAnswer::Part { start: 4, end: 9 }
        );
        assert_eq!(answer(Some("bytes=10-"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(answer(Some("bytes=-0"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-1, 4-5"), 10), RangeAnswer::Whole);
        assert_eq!(answer(Some("pages=1-2"), 10), RangeAnswer::Whole);
        // An invalid range-spec may be ignored or rejected (RFC 9110 section 14.2): rejected.
        assert_eq!(answer(Some("bytes=3-1"), 10), RangeAnswer::Unsatisfiable);
    }
}
