//! Which group a request is in: the route's `[[route.limit]]` rules first (`"METHOD
//! /path/pattern"`, `*` one segment, a trailing `**` any rest), else the group the upstream
//! last named (`X-Rate-Limit-Group`) for the same method and path shape, where path segments
//! that are numbers or `~` (RingCentral's "me") count as one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Method;

use super::Rate;

/// The most path shapes a route remembers the group of (each costs a few dozen bytes); past it,
/// new shapes are not learned until the route restarts. RingCentral's API has a few hundred
/// endpoints.
pub const MAX_LEARNED_SHAPES: usize = 4096;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// This text exactly.
    Literal(String),
    /// Any one segment (`*`).
    Any,
}

/// `"METHOD /path/pattern"`, the method optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    method: Option<Method>,
    segments: Vec<Segment>,
    /// A trailing `**`: any rest, none included.
    rest: bool,
}

impl Pattern {
    /// Parses `"GET /a/*/b"`, `"/a/**"`.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let text = text.trim();
        let (method, path) = match text.split_once(char::is_whitespace) {
            Some((m, p)) => {
                let m = Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|m| m.as_str().bytes().all(|b| b.is_ascii_uppercase()))
                    .ok_or_else(|| format!("`{m}` is not an HTTP method (GET, POST, ...)"))?;
                (Some(m), p.trim())
            }
            None => (None, text),
        };
        let Some(path) = path.strip_prefix('/') else {
            return Err("a pattern is a path starting with `/`, after an optional method".into());
        };
        let mut segments = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "**" if i + 1 == parts.len() => rest = true,
                "**" => return Err("`**` may only end a pattern".into()),
                "*" => segments.push(Segment::Any),
                p if p.contains('*') => {
                    return Err(format!(
                        "`{p}`: `*` stands for a whole segment, not part of one"
                    ))
                }
                p if p.contains(['?', '#']) => {
                    return Err("a pattern matches the path only, without a query".into())
                }
                p => segments.push(Segment::Literal(p.to_owned())),
            }
        }
        Ok(Pattern {
            method,
            segments,
            rest,
        })
    }

    /// Whether a request of `method` to `path` (no query) matches.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for s in &self.segments {
            match (s, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Any, Some(_)) => {}
                _ => return false,
            }
        }
        self.rest || parts.next().is_none()
    }
}

/// One `[[route.limit]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    /// The group's name, as the upstream names it.
    pub group: String,
    /// Requests in the group.
    pub patterns: Vec<Pattern>,
    /// The pace of the group, all replicas together when shared.
    pub rate: Option<Rate>,
}

/// A path shape: the method and the path, with number and `~` segments folded, hashed (with
/// a key of the process's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Shape(pub u64);

/// The groups the upstream named, by path shape.
pub struct Learned {
    hasher: std::collections::hash_map::RandomState,
    groups: ArcSwap<HashMap<Shape, Arc<str>>>,
}

impl std::fmt::Debug for Learned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learned")
            .field("shapes", &self.groups.load().len())
            .finish()
    }
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            hasher: Default::default(),
            groups: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

fn folds(segment: &str) -> bool {
    segment == "~" || (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
}

impl Learned {
    /// The shape of a request.
    pub fn shape(&self, method: &Method, path: &str) -> Shape {
        let mut h = self.hasher.build_hasher();
        method.as_str().hash(&mut h);
        for segment in path.split('/') {
            if folds(segment) {
                0u8.hash(&mut h);
            } else {
                1u8.hash(&mut h);
                segment.hash(&mut h);
            }
        }
        Shape(h.finish())
    }

    /// The group last named for `shape`.
    pub fn group(&self, shape: Shape) -> Option<Arc<str>> {
        self.groups.load().get(&shape).cloned()
    }

    /// Records that the upstream named `group` for `shape` (a copy of the map is made only
    /// when this changes what is known). Returns whether it did change.
    pub fn learn(&self, shape: Shape, group: &str) -> bool {
        let current = self.groups.load();
        match current.get(&shape) {
            Some(g) if &**g == group => return false,
            None if current.len() >= MAX_LEARNED_SHAPES => return false,
            _ => {}
        }
        let group: Arc<str> = Arc::from(group);
        self.groups.rcu(|m| {
            let mut m = HashMap::clone(m);
            if m.len() < MAX_LEARNED_SHAPES || m.contains_key(&shape) {
                m.insert(shape, group.clone());
            }
            m
        });
        true
    }

    /// How many shapes are known.
    pub fn len(&self) -> usize {
        self.groups.load().len()
    }

    /// Whether no shape is known.
    pub fn is_empty(&self) -> bool {
        self.groups.load().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn patterns_match_whole_segments() {
        let get = Method::GET;
        let post = Method::POST;
        let call_log = p("GET /restapi/v1.0/account/*/extension/*/call-log");
        assert!(call_log.matches(&get, "/restapi/v1.0/account/~/extension/~/call-log"));
        assert!(call_log.matches(&get, "/restapi/v1.0/account/1/extension/22/call-log"));
        assert!(!call_log.matches(&post, "/restapi/v1.0/account/1/extension/22/call-log"));
        assert!(!call_log.matches(&get, "/restapi/v1.0/account/1/extension/22/call-log/5"));
        assert!(!call_log.matches(&get, "/restapi/v1.0/account/1/call-log"));
        let any = p("/restapi/**");
        assert!(any.matches(&post, "/restapi/v1.0/x"));
        assert!(any.matches(&get, "/restapi"));
        assert!(!any.matches(&get, "/other/restapi"));
        let root = p("/");
        assert!(root.matches(&get, "/"));
        assert!(!root.matches(&get, "/a"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("get /a", "not an HTTP method"),
            ("GET a/b", "starting with `/`"),
            ("/a/**/b", "may only end"),
            ("/a/b*", "whole segment"),
            ("/a?x=1", "without a query"),
            ("", "starting with `/`"),
        ] {
            let e = Pattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn numbers_and_tilde_fold_into_one_shape() {
        let l = Learned::default();
        let get = Method::GET;
        let a = l.shape(&get, "/restapi/v1.0/account/~/extension/123/call-log");
        assert_eq!(
            a,
            l.shape(&get, "/restapi/v1.0/account/456/extension/~/call-log")
        );
        assert_ne!(
            a,
            l.shape(
                &Method::POST,
                "/restapi/v1.0/account/~/extension/123/call-log"
            )
        );
        assert_ne!(
            a,
            l.shape(&get, "/restapi/v1.0/account/~/extension/123/sms")
        );
        assert_ne!(
            a,
            l.shape(&get, "/restapi/v1.0/account/~/extension/abc/call-log")
        );
        l.learn(a, "heavy");
        assert_eq!(l.group(a).as_deref(), Some("heavy"));
        l.learn(a, "medium");
        assert_eq!(l.group(a).as_deref(), Some("medium"));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn learning_is_bounded() {
        let l = Learned::default();
        for i in 0..MAX_LEARNED_SHAPES + 10 {
            l.learn(l.shape(&Method::GET, &format!("/x/p{i}")), "light");
        }
        assert_eq!(l.len(), MAX_LEARNED_SHAPES);
        // A known shape may still change its group.
        let first = l.shape(&Method::GET, "/x/p0");
        l.learn(first, "heavy");
        assert_eq!(l.group(first).as_deref(), Some("heavy"));
    }
}
