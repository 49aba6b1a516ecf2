//! Listings with the tier's unpersisted writes and deletes laid over the bucket's listing, so a
//! listing shows every acknowledged write at once instead of waiting for persistence.
//!
//! With the tier on, the gateway pages listings itself: it asks the bucket (ListObjectsV2, raw
//! keys, the client's prefix and delimiter) from the client's start position, replaces or drops
//! what the tier has newer ([`tier::Tier::unpersisted_under`], taken before the bucket is
//! asked), adds the tier's objects the bucket does not have yet (rolled up into common prefixes
//! under the delimiter), and cuts the result at `max-keys`. Its continuation tokens (v2) and
//! markers (v1) are the last name it returned, so the next page asks the bucket to start after
//! it: pagination is consistent across the merge whatever the bucket's own tokens are. A common
//! prefix under which the tier has deletes only is kept if the bucket still has another key
//! under it (one more listing of that prefix).

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use s3s::dto::*;
use s3s::{S3Result, s3_error};

use super::{S3Handler, tiered};
use crate::error::upstream_error;

/// What a listing asks, in the gateway's terms.
pub(super) struct Query {
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) delimiter: Option<String>,
    /// List names strictly after this one.
    pub(super) after: Option<String>,
    pub(super) max_keys: usize,
    pub(super) fetch_owner: bool,
    pub(super) expected_bucket_owner: Option<String>,
}

/// One page of a merged listing.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Page {
    pub(super) contents: Vec<Object>,
    pub(super) prefixes: Vec<String>,
    pub(super) truncated: bool,
    /// The last name on the page (a key or a common prefix): where the next page starts.
    pub(super) last: Option<String>,
}

/// Largest page S3 returns.
const MAX_KEYS: usize = 1000;

/// The client's `max-keys`: S3's default and cap are 1,000.
pub(super) fn max_keys(requested: Option<i32>) -> S3Result<usize> {
    match requested {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(s3_error!(
            InvalidArgument,
            "max-keys must be a non-negative integer"
        )),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_KEYS).min(MAX_KEYS)),
    }
}

/// Prefix of the gateway's continuation tokens.
const TOKEN_PREFIX: &str = "gw1.";

/// The continuation token for a page ending at `last`.
pub(super) fn token(last: &str) -> String {
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
    )
}

/// The name a continuation token resumes after.
pub(super) fn resume_after(token: &str) -> S3Result<String> {
    token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

/// The common prefix `key` rolls up into under `delimiter`, if any.
fn rollup<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    let i = rest.find(d)?;
    key.get(..prefix.len() + i + d.len())
}

/// An entry of a listing.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Key(Box<Object>),
    Prefix,
}

/// What the bucket answered, as far as it was read.
#[derive(Default)]
struct Fetched {
    contents: Vec<Object>,
    prefixes: Vec<String>,
    /// The bucket has nothing after what was read.
    done: bool,
}

impl Fetched {
    fn len(&self) -> usize {
        self.contents.len() + self.prefixes.len()
    }

    /// The last name read, when the bucket has more after it.
    fn high(&self) -> Option<&str> {
        if self.done {
            return None;
        }
        let k = self.contents.last().and_then(|o| o.key.as_deref());
        let p = self.prefixes.last().map(String::as_str);
        k.max(p)
    }
}

/// Merges what the bucket answered with the tier's `overlay` (key → object, `None` for a
/// delete) into one page. `dead`: the bucket's common prefixes that hold nothing once the
/// overlay's deletes are applied.
fn merge(
    q: &Query,
    fetched: &Fetched,
    overlay: &BTreeMap<String, Option<Object>>,
    dead: &HashSet<String>,
) -> Page {
    let after = q.after.as_deref();
    let high = fetched.high();
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for o in &fetched.contents {
        let Some(k) = o.key.as_deref() else { continue };
        if after.is_some_and(|a| k <= a) {
            continue;
        }
        match overlay.get(k) {
            Some(Some(newer)) => out.insert(k.to_owned(), Entry::Key(Box::new(newer.clone()))),
            Some(None) => None,
            None => out.insert(k.to_owned(), Entry::Key(Box::new(o.clone()))),
        };
    }
    for p in &fetched.prefixes {
        // A store may answer the prefix a page ended at again when asked to start after it.
        if Some(p.as_str()) == after || dead.contains(p) {
            continue;
        }
        out.insert(p.clone(), Entry::Prefix);
    }
    for (k, v) in overlay {
        let Some(obj) = v else { continue };
        if after.is_some_and(|a| k.as_str() <= a) {
            continue;
        }
        let rolled = rollup(k, &q.prefix, q.delimiter.as_deref());
        let name = rolled.unwrap_or(k);
        // Past what the bucket was read to: the next page has it, in order.
        if high.is_some_and(|h| name > h) || Some(name) == after {
            continue;
        }
        match rolled {
            Some(p) => {
                out.entry(p.to_owned()).or_insert(Entry::Prefix);
            }
            None => {
                out.insert(k.clone(), Entry::Key(Box::new(obj.clone())));
            }
        }
    }
    let mut page = Page {
        truncated: out.len() > q.max_keys || !fetched.done,
        ..Page::default()
    };
    for (name, e) in out.into_iter().take(q.max_keys) {
        match e {
            Entry::Key(o) => page.contents.push(*o),
            Entry::Prefix => page.prefixes.push(name.clone()),
        }
        page.last = Some(name);
    }
    page
}

/// How a listing shows an object the tier holds.
fn listed(key: &str, obj: &tier::CachedObject) -> Object {
    let meta = obj.meta();
    Object {
        key: Some(key.to_owned()),
        size: Some(i64::try_from(obj.size()).unwrap_or(i64::MAX)),
        e_tag: Some(ETag::Strong(meta.etag.clone())),
        last_modified: Some(tiered::timestamp_ms(meta.last_modified_ms)),
        storage_class: Some(ObjectStorageClass::from(
            meta.storage_class
                .clone()
                .unwrap_or_else(|| ObjectStorageClass::STANDARD.to_owned()),
        )),
        ..Default::default()
    }
}

/// One page of the merged listing `q` asks for.
pub(super) async fn list(gw: &S3Handler, tier: &tier::Tier, q: &Query) -> S3Result<Page> {
    let overlay: BTreeMap<String, Option<Object>> = tier
        .unpersisted_under(&q.bucket, &q.prefix)
        .into_iter()
        .map(|(k, v)| {
            let o = v.map(|o| listed(&k, &o));
            (k, o)
        })
        .collect();
    if q.max_keys == 0 {
        return Ok(Page::default());
    }
    // Each delete hides at most one name the bucket lists: read that many more.
    let deletes = overlay
        .iter()
        .filter(|(k, v)| v.is_none() && q.after.as_deref().is_none_or(|a| k.as_str() > a))
        .count();
    let mut want = q.max_keys + deletes;
    let mut fetched = Fetched::default();
    let mut token: Option<String> = None;
    loop {
        while !fetched.done && fetched.len() < want {
            let out = gw
                .client
                .list_objects_v2()
                .bucket(&q.bucket)
                .prefix(&q.prefix)
                .set_delimiter(q.delimiter.clone())
                .set_start_after(if token.is_none() {
                    q.after.clone()
                } else {
                    None
                })
                .set_continuation_token(token.take())
                .max_keys(i32::try_from((want - fetched.len()).min(MAX_KEYS)).unwrap_or(1))
                .fetch_owner(q.fetch_owner)
                .set_expected_bucket_owner(q.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|e| upstream_error(&e))?;
            for o in out.contents.unwrap_or_default() {
                fetched
                    .contents
                    .push(s3s_aws::conv::try_from_aws::<Object>(o)?);
            }
            fetched.prefixes.extend(
                out.common_prefixes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.prefix),
            );
            token = out.next_continuation_token;
            fetched.done = !out.is_truncated.unwrap_or(false) || token.is_none();
        }
        let dead = dead_prefixes(gw, q, &fetched, &overlay).await?;
        let page = merge(q, &fetched, &overlay, &dead);
        // An empty page that says "truncated" would end a client's listing early: read on.
        if page.last.is_some() || fetched.done {
            return Ok(page);
        }
        want = fetched.len() + q.max_keys;
    }
}

/// The bucket's common prefixes under which the overlay has deletes and no objects, and the
/// bucket has no other key.
async fn dead_prefixes(
    gw: &S3Handler,
    q: &Query,
    fetched: &Fetched,
    overlay: &BTreeMap<String, Option<Object>>,
) -> S3Result<HashSet<String>> {
    let mut dead = HashSet::new();
    for p in &fetched.prefixes {
        let under: Vec<(&String, &Option<Object>)> = overlay
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(p.as_str()))
            .collect();
        if under.is_empty() || under.iter().any(|(_, v)| v.is_some()) {
            continue;
        }
        let out = gw
            .client
            .list_objects_v2()
            .bucket(&q.bucket)
            .prefix(p)
            .max_keys(i32::try_from(under.len() + 1).unwrap_or(MAX_KEYS as i32))
            .set_expected_bucket_owner(q.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|e| upstream_error(&e))?;
        let alive = out
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .any(|k| !overlay.contains_key(k));
        if !alive {
            dead.insert(p.clone());
        }
    }
    Ok(dead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: i64) -> Object {
        Object {
            key: Some(key.to_owned()),
            size: Some(size),
            ..Default::default()
        }
    }

    fn query(prefix: &str, delimiter: Option<&str>, after: Option<&str>, max: usize) -> Query {
        Query {
            bucket: "b".into(),
            prefix: prefix.into(),
            delimiter: delimiter.map(str::to_owned),
            after: after.map(str::to_owned),
            max_keys: max,
            fetch_owner: false,
            expected_bucket_owner: None,
        }
    }

    fn names(p: &Page) -> (Vec<(String, i64)>, Vec<String>) {
        (
            p.contents
                .iter()
                .map(|o| (o.key.clone().unwrap(), o.size.unwrap()))
                .collect(),
            p.prefixes.clone(),
        )
    }

    fn overlay(entries: &[(&str, Option<i64>)]) -> BTreeMap<String, Option<Object>> {
        entries
            .iter()
            .map(|(k, s)| ((*k).to_owned(), s.map(|s| obj(k, s))))
            .collect()
    }

    #[test]
    fn unpersisted_writes_replace_add_and_deletes_hide() {
        let fetched = Fetched {
            contents: vec![obj("a", 1), obj("b", 1), obj("c", 1)],
            prefixes: vec![],
            done: true,
        };
        let o = overlay(&[("b", Some(2)), ("c", None), ("d", Some(3))]);
        let p = merge(&query("", None, None, 10), &fetched, &o, &HashSet::new());
        assert_eq!(
            names(&p).0,
            [("a".into(), 1), ("b".into(), 2), ("d".into(), 3)]
        );
        assert!(!p.truncated);
    }

    #[test]
    fn keys_under_the_delimiter_roll_up_and_dead_prefixes_go() {
        let fetched = Fetched {
            contents: vec![obj("top", 1)],
            prefixes: vec!["dir/".into(), "gone/".into()],
            done: true,
        };
        let o = overlay(&[("gone/x", None), ("new/y", Some(1)), ("dir/z", Some(1))]);
        let dead = HashSet::from(["gone/".to_owned()]);
        let p = merge(&query("", Some("/"), None, 10), &fetched, &o, &dead);
        assert_eq!(
            names(&p),
            (vec![("top".into(), 1)], vec!["dir/".into(), "new/".into()])
        );
    }

    #[test]
    fn pages_cut_at_max_keys_and_resume_after_the_last_name() {
        let fetched = Fetched {
            contents: vec![obj("a", 1), obj("c", 1)],
            prefixes: vec![],
            done: true,
        };
        let o = overlay(&[("b", Some(1)), ("d", Some(1))]);
        let first = merge(&query("", None, None, 2), &fetched, &o, &HashSet::new());
        assert_eq!(names(&first).0, [("a".into(), 1), ("b".into(), 1)]);
        assert!(first.truncated);
        assert_eq!(first.last.as_deref(), Some("b"));
        // The next page: the bucket was asked to start after "b".
        let rest = Fetched {
            contents: vec![obj("c", 1)],
            prefixes: vec![],
            done: true,
        };
        let second = merge(&query("", None, Some("b"), 2), &rest, &o, &HashSet::new());
        assert_eq!(names(&second).0, [("c".into(), 1), ("d".into(), 1)]);
        assert!(!second.truncated);
    }

    #[test]
    fn nothing_past_what_the_bucket_was_read_to_is_added() {
        // The bucket has more after "m": the tier's "z" belongs on a later page.
        let fetched = Fetched {
            contents: vec![obj("a", 1), obj("m", 1)],
            prefixes: vec![],
            done: false,
        };
        let o = overlay(&[("b", Some(1)), ("z", Some(1))]);
        let p = merge(&query("", None, None, 10), &fetched, &o, &HashSet::new());
        assert_eq!(
            names(&p).0,
            [("a".into(), 1), ("b".into(), 1), ("m".into(), 1)]
        );
        assert!(p.truncated);
        assert_eq!(p.last.as_deref(), Some("m"));
    }

    #[test]
    fn a_prefix_a_page_ended_at_is_not_listed_again() {
        let fetched = Fetched {
            contents: vec![obj("e", 1)],
            prefixes: vec!["dir/".into()],
            done: true,
        };
        let o = overlay(&[("dir/new", Some(1))]);
        let p = merge(
            &query("", Some("/"), Some("dir/"), 10),
            &fetched,
            &o,
            &HashSet::new(),
        );
        assert_eq!(names(&p), (vec![("e".into(), 1)], vec![]));
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        for name in ["a", "dir/", "é + ü/ %", ""] {
            assert_eq!(resume_after(&token(name)).unwrap(), name);
        }
        assert!(resume_after("bucket-token").is_err());
        assert_eq!(max_keys(None).unwrap(), 1000);
        assert_eq!(max_keys(Some(5000)).unwrap(), 1000);
        assert!(max_keys(Some(-1)).is_err());
    }
}
