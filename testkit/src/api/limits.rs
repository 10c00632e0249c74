//! RingCentral's API rate limits, as the API double enforces them.
//!
//! RingCentral puts every API endpoint in one usage-plan group and limits the requests of each
//! group per user and app (<https://developers.ringcentral.com/guide/basics/rate-limits>); the
//! API reference names the group of each endpoint under "API Group"
//! (<https://developers.ringcentral.com/api-reference>). The published defaults:
//!
//! | group | requests | window | penalty |
//! |---|---|---|---|
//! | Light | 50 | 60 s | 60 s |
//! | Medium | 40 | 60 s | 60 s |
//! | Heavy | 10 | 60 s | 60 s |
//! | Auth (token, revoke) | 5 | 60 s | 60 s |
//!
//! How the double counts (see [`ApiLimits`] for the numbers):
//!
//! - One counter per group per double. RingCentral counts per (user, app); every token of a
//!   double's [`TokenServer`](crate::token_server::TokenServer) belongs to the same user and
//!   app, so one counter per double is that pair's counter.
//! - A sliding window: a request is allowed when fewer than `limit` requests of its group were
//!   counted in the `window` before it. RingCentral does not publish the kind of window its
//!   gateway uses; a sliding one refuses whatever a fixed one would, so a client that keeps to
//!   it keeps to either.
//! - Only requests whose token was accepted are counted: RingCentral counts per authenticated
//!   user, and a 401 has none. A 401 still carries the four headers (the group's state, not
//!   counted), and never starts or restarts a penalty.
//! - Over the limit: 429 `CMN-301` with `Retry-After`, and the group is in a penalty window
//!   (60 s by default) during which every request of the group is answered 429. A request
//!   during the penalty restarts it: RingCentral documents this for the Auth group; the double
//!   applies the same rule to the API groups. Once the penalty lapses the group starts a fresh
//!   window (as the token double's Auth group does).
//! - Groups are independent: a Heavy penalty does not slow Light requests.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;

use crate::token_server::{ceil_secs, RateHeaders};

/// A RingCentral usage-plan group ("API Group" in RingCentral's API reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// 50 requests per 60 s by default: reads of small resources.
    Light,
    /// 40 requests per 60 s by default: writes, SMS, subscriptions.
    Medium,
    /// 10 requests per 60 s by default: call log, RingOut, fax.
    Heavy,
    /// 5 requests per 60 s by default: the OAuth endpoints (token, revoke).
    Auth,
}

impl Group {
    /// Every group.
    pub const ALL: [Group; 4] = [Group::Light, Group::Medium, Group::Heavy, Group::Auth];

    /// The name RingCentral sends in `X-Rate-Limit-Group`: `light`, `medium`, `heavy`, `auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Light => "light",
            Group::Medium => "medium",
            Group::Heavy => "heavy",
            Group::Auth => "auth",
        }
    }

    /// The group named `name` (in any case), as in `X-Rate-Limit-Group` or the double's
    /// `group=` query knob.
    pub fn from_name(name: &str) -> Option<Group> {
        Group::ALL
            .into_iter()
            .find(|g| g.as_str().eq_ignore_ascii_case(name))
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits the API double enforces: `(requests, window)` per group, and the penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// The Light group (RingCentral: 50 per 60 s).
    pub light: (u32, Duration),
    /// The Medium group (RingCentral: 40 per 60 s).
    pub medium: (u32, Duration),
    /// The Heavy group (RingCentral: 10 per 60 s).
    pub heavy: (u32, Duration),
    /// The Auth group, for token and revoke requests sent to the API double (RingCentral: 5 per
    /// 60 s). The token double counts its own requests in its own Auth group
    /// ([`RateLimit`](crate::token_server::RateLimit)).
    pub auth: (u32, Duration),
    /// How long a group answers 429 once over its limit; each request during the penalty
    /// restarts it (RingCentral: 60 s).
    pub penalty: Duration,
}

impl ApiLimits {
    /// RingCentral's published defaults: Light 50, Medium 40, Heavy 10, Auth 5, each per 60 s,
    /// and a 60 s penalty (<https://developers.ringcentral.com/guide/basics/rate-limits>).
    pub fn ringcentral() -> ApiLimits {
        let minute = Duration::from_secs(60);
        ApiLimits {
            light: (50, minute),
            medium: (40, minute),
            heavy: (10, minute),
            auth: (5, minute),
            penalty: minute,
        }
    }

    /// The same `limit` per `window` for every group, and `penalty`: small numbers for tests.
    pub fn uniform(limit: u32, window: Duration, penalty: Duration) -> ApiLimits {
        ApiLimits {
            light: (limit, window),
            medium: (limit, window),
            heavy: (limit, window),
            auth: (limit, window),
            penalty,
        }
    }

    /// `(requests, window)` of `group`.
    pub fn of(&self, group: Group) -> (u32, Duration) {
        match group {
            Group::Light => self.light,
            Group::Medium => self.medium,
            Group::Heavy => self.heavy,
            Group::Auth => self.auth,
        }
    }
}

/// The group of a request, from RingCentral's API reference (the "API Group" of each endpoint,
/// <https://developers.ringcentral.com/api-reference>), as RingCentral's SDK generated from
/// the same specification carries it (ringcentral-extensible, `packages/core/src/paths`, the
/// "Rate Limit Group" of each endpoint, commit f2ce961 of 2026-07-08). The commonly used
/// endpoints only; unknown endpoints are Light. Every session and party operation of call
/// control is Light in the reference; the `sessions/*/**` entry assumes the same of any other.
///
/// Entries are `"METHOD /path"` (without a method: any method). In a path, `{id}` is an account
/// or extension id (`~` or digits), `*` any one segment, a trailing `**` any rest (also none).
/// The first match wins; a trailing `/` in the request path is ignored.
#[rustfmt::skip] // one entry a line
pub const GROUP_TABLE: &[(&str, Group)] = &[
    // Auth
    ("POST /restapi/oauth/token", Group::Auth),
    ("POST /restapi/oauth/revoke", Group::Auth),
    ("/restapi/oauth/authorize", Group::Auth),
    ("POST /restapi/oauth/wstoken", Group::Auth),
    // Account and extension info
    ("GET /restapi/v1.0/account/{id}", Group::Light),
    ("GET /restapi/v1.0/account/{id}/extension", Group::Medium),
    ("GET /restapi/v1.0/account/{id}/extension/{id}", Group::Light),
    ("PUT /restapi/v1.0/account/{id}/extension/{id}", Group::Medium),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/phone-number", Group::Light),
    ("GET /restapi/v1.0/account/{id}/phone-number", Group::Heavy),
    // Call log and active calls
    ("GET /restapi/v1.0/account/{id}/call-log", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/call-log/*", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/call-log-sync", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/active-calls", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/call-log", Group::Heavy),
    ("DELETE /restapi/v1.0/account/{id}/extension/{id}/call-log", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/call-log/*", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/call-log-sync", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/active-calls", Group::Heavy),
    // SMS, MMS, pager, fax
    ("POST /restapi/v1.0/account/{id}/extension/{id}/sms", Group::Medium),
    ("POST /restapi/v1.0/account/{id}/extension/{id}/mms", Group::Medium),
    ("POST /restapi/v1.0/account/{id}/extension/{id}/company-pager", Group::Medium),
    ("POST /restapi/v1.0/account/{id}/extension/{id}/fax", Group::Heavy),
    // Message store
    ("GET /restapi/v1.0/account/{id}/extension/{id}/message-store", Group::Light),
    ("DELETE /restapi/v1.0/account/{id}/extension/{id}/message-store", Group::Medium),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/message-store/*", Group::Light),
    ("PUT /restapi/v1.0/account/{id}/extension/{id}/message-store/*", Group::Medium),
    ("PATCH /restapi/v1.0/account/{id}/extension/{id}/message-store/*", Group::Medium),
    ("DELETE /restapi/v1.0/account/{id}/extension/{id}/message-store/*", Group::Medium),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/message-store/*/content/*", Group::Medium),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/message-sync", Group::Light),
    // Presence
    ("GET /restapi/v1.0/account/{id}/presence", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/presence", Group::Light),
    ("PUT /restapi/v1.0/account/{id}/extension/{id}/presence", Group::Medium),
    // Subscriptions
    ("POST /restapi/v1.0/subscription", Group::Medium),
    ("GET /restapi/v1.0/subscription", Group::Light),
    ("GET /restapi/v1.0/subscription/*", Group::Light),
    ("PUT /restapi/v1.0/subscription/*", Group::Medium),
    ("DELETE /restapi/v1.0/subscription/*", Group::Medium),
    ("POST /restapi/v1.0/subscription/*/renew", Group::Light),
    // RingOut
    ("POST /restapi/v1.0/account/{id}/extension/{id}/ring-out", Group::Heavy),
    ("GET /restapi/v1.0/account/{id}/extension/{id}/ring-out/*", Group::Light),
    ("DELETE /restapi/v1.0/account/{id}/extension/{id}/ring-out/*", Group::Heavy),
    // Call control: every operation on a telephony session or party is Light.
    ("POST /restapi/v1.0/account/{id}/telephony/call-out", Group::Heavy),
    ("POST /restapi/v1.0/account/{id}/telephony/conference", Group::Heavy),
    ("/restapi/v1.0/account/{id}/telephony/sessions/*/**", Group::Light),
];

/// The usage-plan group of `method` `path` per [`GROUP_TABLE`]; Light when no entry matches.
pub fn group_of(method: &Method, path: &str) -> Group {
    GROUP_TABLE
        .iter()
        .find(|(entry, _)| {
            let (want, pattern) = entry.split_once(' ').unwrap_or(("", entry));
            (want.is_empty() || want == method.as_str()) && path_matches(pattern, path)
        })
        .map_or(Group::Light, |&(_, group)| group)
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let mut want = pattern.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (Some("**"), _) => return true,
            (None, None) => return true,
            (Some(w), Some(h)) if segment_matches(w, h) => {}
            _ => return false,
        }
    }
}

fn segment_matches(want: &str, have: &str) -> bool {
    match want {
        "{id}" => have == "~" || (!have.is_empty() && have.bytes().all(|b| b.is_ascii_digit())),
        "*" => !have.is_empty(),
        literal => literal == have,
    }
}

/// What the limiter decided about a request whose token was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Counted and allowed.
    Allowed,
    /// Over the limit: answered 429, and the penalty starts.
    Exceeded,
    /// The group was already in its penalty: answered 429, not counted, the penalty restarts.
    InPenalty,
}

#[derive(Debug, Default)]
struct GroupState {
    /// When the counted requests still in the window arrived, oldest first; at most `limit`.
    hits: VecDeque<Instant>,
    penalty_until: Option<Instant>,
}

impl GroupState {
    fn slide(&mut self, now: Instant, window: Duration) {
        while self
            .hits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.hits.pop_front();
        }
    }

    /// Ends a penalty that has lapsed (a fresh window follows); whether one is still running.
    fn in_penalty(&mut self, now: Instant) -> bool {
        match self.penalty_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.penalty_until = None;
                self.hits.clear();
                false
            }
            None => false,
        }
    }
}

/// The per-group counters of one API double.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: ApiLimits,
    /// `false`: count and report in the headers, never refuse (the double without limits).
    enforce: bool,
    groups: Mutex<[GroupState; 4]>,
}

impl Limiter {
    /// Enforces `limits`; with `None`, reports [`ApiLimits::ringcentral`] and refuses nothing.
    pub(crate) fn new(limits: Option<ApiLimits>) -> Limiter {
        Limiter {
            limits: limits.unwrap_or_else(ApiLimits::ringcentral),
            enforce: limits.is_some(),
            groups: Mutex::default(),
        }
    }

    /// The limits enforced, if any.
    pub(crate) fn limits(&self) -> Option<ApiLimits> {
        self.enforce.then_some(self.limits)
    }

    /// `Retry-After` of a 429 (seconds): the whole penalty, since a request restarts it.
    pub(crate) fn retry_after(&self) -> u64 {
        ceil_secs(self.limits.penalty)
    }

    fn headers(&self, group: Group, remaining: usize) -> RateHeaders {
        let (limit, window) = self.limits.of(group);
        RateHeaders {
            group: group.as_str(),
            limit,
            remaining: limit.saturating_sub(u32::try_from(remaining).unwrap_or(u32::MAX)),
            window: ceil_secs(window),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [GroupState; 4]> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request of `group` whose token was accepted, arriving now.
    pub(crate) fn admit(&self, group: Group) -> (Verdict, RateHeaders) {
        self.admit_at(group, Instant::now())
    }

    fn admit_at(&self, group: Group, now: Instant) -> (Verdict, RateHeaders) {
        let (limit, window) = self.limits.of(group);
        let limit = limit as usize;
        let mut groups = self.lock();
        let state = &mut groups[group.index()];
        if self.enforce && state.in_penalty(now) {
            state.penalty_until = Some(now + self.limits.penalty);
            return (Verdict::InPenalty, self.headers(group, limit));
        }
        state.slide(now, window);
        if state.hits.len() >= limit {
            if self.enforce {
                state.penalty_until = Some(now + self.limits.penalty);
                return (Verdict::Exceeded, self.headers(group, limit));
            }
            // Not enforcing: keep only the newest `limit` arrivals, enough to say 0 remain.
            state.hits.pop_front();
        }
        state.hits.push_back(now);
        (Verdict::Allowed, self.headers(group, state.hits.len()))
    }

    /// The headers of a request of `group` that is not counted (a 401).
    pub(crate) fn peek(&self, group: Group) -> RateHeaders {
        let now = Instant::now();
        let (limit, window) = self.limits.of(group);
        let mut groups = self.lock();
        let state = &mut groups[group.index()];
        if self.enforce && state.in_penalty(now) {
            return self.headers(group, limit as usize);
        }
        state.slide(now, window);
        self.headers(group, state.hits.len())
    }

    /// Time left in the penalty of `group`, if it is in one.
    pub(crate) fn penalty_remaining(&self, group: Group) -> Option<Duration> {
        let now = Instant::now();
        self.lock()[group.index()]
            .penalty_until
            .map(|until| until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_ringcentral_endpoints() {
        use Group::{Auth, Heavy, Light, Medium};
        #[rustfmt::skip]
        let cases = [
            ("GET /restapi/v1.0/account/~", Light),
            ("GET /restapi/v1.0/account/123456", Light),
            ("GET /restapi/v1.0/account/~/extension/~", Light),
            ("GET /restapi/v1.0/account/~/extension/101", Light),
            ("GET /restapi/v1.0/account/~/extension", Medium),
            ("GET /restapi/v1.0/account/~/extension/~/phone-number", Light),
            ("GET /restapi/v1.0/account/~/phone-number", Heavy),
            ("GET /restapi/v1.0/account/~/extension/~/call-log", Heavy),
            ("GET /restapi/v1.0/account/~/extension/~/call-log/", Heavy),
            ("GET /restapi/v1.0/account/42/call-log", Heavy),
            ("GET /restapi/v1.0/account/~/call-log/Abc123", Heavy),
            ("POST /restapi/v1.0/account/~/extension/~/sms", Medium),
            ("POST /restapi/v1.0/account/~/extension/~/mms", Medium),
            ("GET /restapi/v1.0/account/~/extension/~/message-store", Light),
            ("GET /restapi/v1.0/account/~/extension/~/message-store/77", Light),
            ("DELETE /restapi/v1.0/account/~/extension/~/message-store/77", Medium),
            ("GET /restapi/v1.0/account/~/extension/~/message-store/77/content/8", Medium),
            ("POST /restapi/v1.0/subscription", Medium),
            ("GET /restapi/v1.0/subscription", Light),
            ("POST /restapi/v1.0/subscription/9f1c-aa/renew", Light),
            ("POST /restapi/v1.0/account/~/extension/~/ring-out", Heavy),
            ("GET /restapi/v1.0/account/~/extension/~/ring-out/5", Light),
            ("GET /restapi/v1.0/account/~/extension/~/presence", Light),
            ("GET /restapi/v1.0/account/~/presence", Heavy),
            ("POST /restapi/v1.0/account/~/telephony/sessions/s-1/parties/p-2/hold", Light),
            ("GET /restapi/v1.0/account/~/telephony/sessions/s-1", Light),
            ("POST /restapi/v1.0/account/~/telephony/call-out", Heavy),
            ("POST /restapi/oauth/token", Auth),
            ("POST /restapi/oauth/revoke", Auth),
            ("GET /restapi/oauth/authorize", Auth),
            // Unknown endpoints, other methods, ids that are neither `~` nor digits: Light.
            ("GET /anything", Light),
            ("GET /", Light),
            ("GET /restapi/v1.0/account/~/telephony/sessions", Light),
            ("POST /restapi/v1.0/account/~/extension/~/call-log", Light),
            ("GET /restapi/v1.0/account/abc/extension/~/call-log", Light),
            ("GET /restapi/v1.0/account/~/extension/~/call-log/1/2", Light),
            ("GET /restapi/v1.0/account/~/extension/~/sms", Light),
        ];
        for (request, want) in cases {
            let (method, path) = request.split_once(' ').unwrap();
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(group_of(&method, path), want, "{request}");
        }
    }

    #[test]
    fn group_names_are_ringcentrals_in_lower_case() {
        let names: Vec<_> = Group::ALL.iter().map(|g| g.as_str()).collect();
        assert_eq!(names, ["light", "medium", "heavy", "auth"]);
        assert_eq!(Group::from_name("Heavy"), Some(Group::Heavy));
        assert_eq!(Group::from_name("huge"), None);
    }

    #[test]
    fn the_window_slides() {
        let limiter = Limiter::new(Some(ApiLimits::uniform(
            2,
            Duration::from_secs(10),
            Duration::from_secs(30),
        )));
        let t0 = Instant::now();
        let (v, h) = limiter.admit_at(Group::Heavy, t0);
        assert_eq!((v, h.remaining), (Verdict::Allowed, 1));
        let (v, h) = limiter.admit_at(Group::Heavy, t0 + Duration::from_secs(6));
        assert_eq!((v, h.remaining), (Verdict::Allowed, 0));
        // 10 s after the first, it leaves the window: one place, not a fresh window of two.
        let (v, h) = limiter.admit_at(Group::Heavy, t0 + Duration::from_secs(10));
        assert_eq!((v, h.remaining), (Verdict::Allowed, 0));
        let (v, _) = limiter.admit_at(Group::Heavy, t0 + Duration::from_secs(11));
        assert_eq!(v, Verdict::Exceeded);
    }

    #[test]
    fn the_penalty_restarts_and_then_a_fresh_window_opens() {
        let limiter = Limiter::new(Some(ApiLimits::uniform(
            1,
            Duration::from_secs(60),
            Duration::from_secs(10),
        )));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(limiter.admit_at(Group::Light, at(0)).0, Verdict::Allowed);
        assert_eq!(limiter.admit_at(Group::Light, at(0)).0, Verdict::Exceeded);
        assert_eq!(limiter.admit_at(Group::Light, at(9)).0, Verdict::InPenalty);
        assert_eq!(limiter.admit_at(Group::Light, at(18)).0, Verdict::InPenalty);
        // Another group is not affected.
        assert_eq!(limiter.admit_at(Group::Medium, at(18)).0, Verdict::Allowed);
        // 10 s after the last request: the penalty is over and the 60 s window starts afresh.
        let (v, h) = limiter.admit_at(Group::Light, at(28));
        assert_eq!((v, h.remaining), (Verdict::Allowed, 0));
    }

    #[test]
    fn without_limits_it_counts_but_never_refuses() {
        let limiter = Limiter::new(None);
        assert_eq!(limiter.limits(), None);
        let t0 = Instant::now();
        for n in 1..=12u32 {
            let (v, h) = limiter.admit_at(Group::Heavy, t0);
            assert_eq!(v, Verdict::Allowed);
            assert_eq!((h.group, h.limit, h.window), ("heavy", 10, 60));
            assert_eq!(h.remaining, 10u32.saturating_sub(n));
        }
        // At most `limit` arrivals are kept.
        assert_eq!(limiter.lock()[Group::Heavy.index()].hits.len(), 10);
        assert_eq!(limiter.peek(Group::Light).remaining, 50);
    }
}
