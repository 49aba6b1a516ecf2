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

/// Longest file name (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Length of unpadded base64 of `n` bytes.
fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Refuses, with a clear 4xx, a write of `key` (encoded) the file mapping cannot hold (so it
/// fails before it is acknowledged, never with a 500 from the file system): a NUL byte, a path
/// segment longer than a file name, or a key whose metadata file name (s3s-fs names it
/// `.bucket-<b64 bucket>.object-<b64 key>[.upload-<uuid>].metadata.json`) would be too long.
/// `multipart`: the write is a multipart upload (its metadata file name is longer).
pub fn check_holdable(bucket: &str, key: &str, multipart: bool) -> S3Result<()> {
    if key.contains('\0') {
        return Err(s3_error!(
            InvalidArgument,
            "the embedded store cannot hold keys with a NUL byte"
        ));
    }
    if key.split('/').any(|seg| seg.len() > NAME_MAX) {
        return Err(s3_error!(
            KeyTooLongError,
            "the embedded store holds key segments (between '/') of at most {NAME_MAX} bytes"
        ));
    }
    let upload = if multipart { ".upload-".len() + 36 } else { 0 };
    let meta = ".bucket-".len() + b64_len(bucket.len()) + ".object-".len() + upload;
    let room = NAME_MAX.saturating_sub(meta + ".metadata.json".len());
    if b64_len(key.len()) > room {
        return Err(s3_error!(
            KeyTooLongError,
            "the embedded store holds keys of at most {} bytes in bucket {bucket:?}{} (a limit \
             of its file mapping, not of S3: use a real S3 server for longer keys)",
            room * 3 / 4,
            if multipart {
                " for multipart uploads"
            } else {
                ""
            }
        ));
    }
    Ok(())
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
    fn keys_the_file_mapping_cannot_hold_are_refused() {
        assert!(check_holdable("b", "a/b", false).is_ok());
        assert!(check_holdable("b", "a\0b", false).is_err());
        assert!(check_holdable("b", &"s".repeat(256), false).is_err());
        // the metadata file name bounds the whole key: 255 - 30 - 2 (b64 "b") = 223 chars
        // of base64, 167 bytes of key
        assert!(check_holdable("b", &"k/".repeat(83), false).is_ok());
        assert!(check_holdable("b", &"k/".repeat(84), false).is_err());
        assert!(check_holdable("b", &"k/".repeat(83), true).is_err());
    }

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
