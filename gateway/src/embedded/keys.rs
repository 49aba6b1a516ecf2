//! Object keys as the embedded store's files see them.
//!
//! s3s-fs maps a key to a file path, so segments a path cannot hold are escaped: an empty
//! segment (a leading `/`, or `//`) becomes [`MARK`], and a segment that already starts with
//! [`MARK`] gets one more. A trailing `/` stays (s3s-fs keeps `dir/` folder objects as
//! directories). `.` and `..` segments are refused: a path would collapse them.
//!
//! The encoding keeps prefixes: if `p` is a prefix of `k`, `encode_prefix(p)` is a prefix of
//! `encode(k)`, so listings by prefix work on encoded keys.

use s3s::{S3Result, s3_error};

/// Stands for an empty segment (U+E000, private use).
pub const MARK: char = '\u{E000}';

fn encode_segment(seg: &str, out: &mut String, last_partial: bool) {
    if seg.is_empty() {
        if !last_partial {
            out.push(MARK);
        }
    } else {
        if seg.starts_with(MARK) {
            out.push(MARK);
        }
        out.push_str(seg);
    }
}

/// Encodes a whole key. Refuses `.` and `..` segments.
pub fn encode(key: &str) -> S3Result<String> {
    let segs: Vec<&str> = key.split('/').collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, seg) in segs.iter().enumerate() {
        if *seg == "." || *seg == ".." {
            return Err(s3_error!(
                InvalidArgument,
                "the embedded store cannot hold keys with '.' or '..' path segments: {key:?}"
            ));
        }
        if i > 0 {
            out.push('/');
        }
        // The trailing empty segment of `dir/` stays empty.
        let trailing = i == segs.len() - 1 && i > 0;
        encode_segment(seg, &mut out, trailing);
    }
    Ok(out)
}

/// Encodes a listing prefix (its last segment may be partial).
pub fn encode_prefix(prefix: &str) -> String {
    let segs: Vec<&str> = prefix.split('/').collect();
    let mut out = String::with_capacity(prefix.len() + 4);
    for (i, seg) in segs.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        encode_segment(seg, &mut out, i == segs.len() - 1);
    }
    out
}

/// Decodes a key or prefix from the store.
pub fn decode(stored: &str) -> String {
    let mut out = String::with_capacity(stored.len());
    for (i, seg) in stored.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg == MARK.to_string() {
            continue;
        }
        out.push_str(seg.strip_prefix(MARK).unwrap_or(seg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(encode("a/b").unwrap(), "a/b");
        assert_eq!(encode("dir/").unwrap(), "dir/");
        assert_eq!(encode("/leading").unwrap(), "\u{E000}/leading");
        assert_eq!(encode("a//b").unwrap(), "a/\u{E000}/b");
        assert!(encode("a/../b").is_err());
        assert!(encode("./b").is_err());
        assert_eq!(decode(&encode("//x//").unwrap()), "//x//");
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("/"),
                Just("a"),
                Just("b"),
                Just("\u{E000}"),
                Just(".x")
            ],
            0..8,
        )
        .prop_map(|v| v.concat())
        .prop_filter("dot segments are refused", |k| {
            !k.split('/').any(|s| s == "." || s == "..")
        })
    }

    proptest! {
        #[test]
        fn roundtrip(k in key()) {
            let e = encode(&k).unwrap();
            prop_assert_eq!(decode(&e), k);
        }

        #[test]
        fn prefixes_are_kept(k in key(), cut in 0usize..16) {
            let cut = cut.min(k.len());
            if k.is_char_boundary(cut) {
                let p = &k[..cut];
                let ek = encode(&k).unwrap();
                prop_assert!(ek.starts_with(&encode_prefix(p)), "{:?} {:?}", p, k);
            }
        }

        #[test]
        fn encoding_is_injective(a in key(), b in key()) {
            if a != b {
                prop_assert_ne!(encode(&a).unwrap(), encode(&b).unwrap());
            }
        }
    }
}
