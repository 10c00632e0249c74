//! One route's rate limits, decided on the request path: the blocks the upstream imposed (a
//! `429`, or a `503` with `Retry-After`), and the pace of the groups given a `rate`.
//!
//! The request path pays one atomic load when nothing is blocked and no rule has a rate, plus
//! the hash of the request's path shape (so that the group the upstream names in its answer
//! can be learned). Blocks live in an [`ArcSwap`]: requests read them without a lock, a block
//! starting or ending copies the short list. Each block ends on a timer, which logs it.
//!
//! With a shared store ([`SharedLimits`]), a block learned here is written to Redis and pushed
//! to every replica, and a rate is taken from one window in Redis; while Redis is unreachable
//! each replica falls back to its own view ([`SharedLimits::is_up`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::rules::{Learned, LimitRule, Pattern, Shape};
use super::shared::SharedLimits;
use super::{parse_retry_after, Rate, SlidingWindow};
use crate::metrics::Metrics;

/// The header RingCentral names a response's group in.
pub const GROUP_HEADER: &str = "x-rate-limit-group";

/// The group label of a block of the whole route (the upstream named no group).
pub const WHOLE_ROUTE: &str = "*";

/// The most groups blocked at once on a route: group names come from the upstream, and a
/// hostile one must not grow the list without bound (past it, new groups are not blocked).
pub const MAX_BLOCKS: usize = 256;

/// The most group names of a route that become metric label values besides the groups of its
/// rules: names come from the upstream, and a hostile one must not grow `/metrics` without
/// bound. Further groups are counted and shown under [`OTHER_GROUPS`].
pub const MAX_GROUP_LABELS: usize = 64;

/// The group label of the groups past [`MAX_GROUP_LABELS`].
pub const OTHER_GROUPS: &str = "other";

/// The group label values of a route's metrics: the rules' groups, the whole route, then the
/// first [`MAX_GROUP_LABELS`] others the upstream named; [`OTHER_GROUPS`] for the rest.
#[derive(Debug)]
struct GroupLabels {
    known: Mutex<std::collections::HashSet<Arc<str>>>,
    cap: usize,
}

impl GroupLabels {
    fn new<'a>(fixed: impl Iterator<Item = &'a str>) -> Self {
        let mut known: std::collections::HashSet<Arc<str>> = fixed.map(Arc::from).collect();
        known.insert(Arc::from(WHOLE_ROUTE));
        let cap = known.len() + MAX_GROUP_LABELS;
        GroupLabels {
            known: Mutex::new(known),
            cap,
        }
    }

    /// The label of `group`, taking a place for it while there is one.
    fn label(&self, group: &str) -> Arc<str> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known.get(group) {
            return k.clone();
        }
        if known.len() < self.cap {
            let k: Arc<str> = Arc::from(group);
            known.insert(k.clone());
            return k;
        }
        Arc::from(OTHER_GROUPS)
    }
}

/// How much later than a block already held a block from Redis may end and still be taken
/// for the same one (its echo, give or take the clocks); a later one extends the block here.
const SAME_BLOCK: Duration = Duration::from_millis(100);

/// What the route does with requests of a blocked group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer `429` at once, without going upstream.
    Reject,
    /// Wait for the block to end when it ends within the maximum wait, else `429`.
    Hold,
    /// No limits: everything is forwarded and nothing is learned.
    Off,
}

impl Mode {
    /// Every mode, as the help lists them.
    pub const ALL: [Mode; 3] = [Mode::Reject, Mode::Hold, Mode::Off];

    /// The mode's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Reject => "reject",
            Mode::Hold => "hold",
            Mode::Off => "off",
        }
    }
}

/// A route's rate-limit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// What blocked requests get.
    pub mode: Mode,
    /// The longest a request waits for a block to end or for room in a rate.
    pub max_wait: Duration,
    /// How long a `429` without `Retry-After` blocks its group.
    pub default_wait: Duration,
    /// `[[route.limit]]`, in order: the first whose pattern matches gives the group.
    pub rules: Vec<LimitRule>,
}

/// Why a request is answered `429` by the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A block the upstream imposed.
    Blocked,
    /// A configured rate.
    Paced,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Blocked => "blocked",
            Source::Paced => "paced",
        }
    }
}

/// Where a request stands in its admission: the first decision, or a later one after a wait.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pass {
    /// No later than this the request goes upstream or is refused (set at the first wait).
    deadline: Option<Instant>,
    /// The rule whose rate already counted this request.
    granted: Option<usize>,
    /// Whether the request was already counted in `token_sidecar_rate_limited_total`.
    counted: bool,
}

impl Pass {
    /// No later than this the request goes upstream or is refused (once it has waited).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// What to wait for before deciding again.
#[derive(Debug)]
pub enum Wait {
    /// Until then (room in a local window).
    Until(Instant),
    /// Until a block ends; then the requests it held go one at a time ([`RouteLimits::released`]).
    Block(Instant),
    /// A place in the shared window of this rule.
    Shared(usize),
}

/// A request that must wait, and its admission so far.
#[derive(Debug)]
pub struct Later {
    /// What it waits for.
    pub wait: Wait,
    /// Its admission, for the next decision.
    pub pass: Pass,
    /// Its group, for the `429` if the wait is in vain.
    pub group: Arc<str>,
}

/// The decision on a request.
#[derive(Debug)]
pub enum Admit {
    /// Send it; the shape is for learning the group from the answer.
    Go(Shape),
    /// Answer `429` with `Retry-After`.
    Refuse {
        /// The group blocked or paced.
        group: Arc<str>,
        /// How long until a request of the group may go.
        retry_after: Duration,
    },
    /// Decide again after a wait.
    Later(Box<Later>),
}

/// One blocked group (`None`: the whole route).
#[derive(Debug, Clone)]
struct Block {
    group: Option<Arc<str>>,
    until: Instant,
}

impl Block {
    fn covers(&self, group: Option<&str>) -> bool {
        match &self.group {
            None => true,
            Some(g) => group == Some(&**g),
        }
    }

    fn label(&self) -> &str {
        self.group.as_deref().unwrap_or(WHOLE_ROUTE)
    }
}

/// A rule, ready for the request path.
struct Rule {
    group: Arc<str>,
    patterns: Vec<Pattern>,
    rate: Option<(Rate, Arc<Mutex<SlidingWindow>>)>,
}

/// Where a block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This replica's upstream answered 429/503.
    Upstream,
    /// Another replica, through the shared store.
    Shared,
}

/// The window a configured rate is paced with: a little longer than the rate's own. The
/// upstream counts requests when they arrive, the sidecar when it lets them go; connecting
/// and queueing delay some more than others, and a window paced exactly would see N+1 arrive
/// within it now and then. A tenth of the window, from 50 ms to 2 s.
pub fn paced(rate: Rate) -> Rate {
    let slack = (rate.window / 10).clamp(Duration::from_millis(50), Duration::from_secs(2));
    Rate {
        max: rate.max,
        window: rate.window + slack,
    }
}

/// One route's limits.
pub struct RouteLimits {
    route: Arc<str>,
    settings: LimitSettings,
    rules: Box<[Rule]>,
    has_rates: bool,
    learned: Learned,
    blocks: ArcSwap<Vec<Block>>,
    labels: GroupLabels,
    /// One permit: requests released by a block's end go upstream one at a time.
    released: tokio::sync::Semaphore,
    metrics: Metrics,
    shared: Option<Arc<SharedLimits>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for RouteLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimits")
            .field("route", &self.route)
            .field("mode", &self.settings.mode)
            .finish_non_exhaustive()
    }
}

fn unix_seconds(at: Instant, now: Instant) -> f64 {
    let wall = SystemTime::now() + at.saturating_duration_since(now);
    wall.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A group name as the upstream or a rule gives it: lowercase, at most 64 visible characters.
pub fn normalize_group(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_graphic())
        && name != WHOLE_ROUTE)
        .then(|| name.to_ascii_lowercase())
}

impl RouteLimits {
    /// The limits of route `route`; `shared` when replicas share them. Timers that end blocks
    /// run in `tasks` until `shutdown`.
    pub fn new(
        route: &str,
        settings: LimitSettings,
        metrics: Metrics,
        shared: Option<Arc<SharedLimits>>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        // A rate belongs to its group: every rule of the group shares one window, counted
        // with a slack (see `paced`).
        let mut windows: std::collections::HashMap<String, (Rate, Arc<Mutex<SlidingWindow>>)> =
            Default::default();
        for r in &settings.rules {
            if let Some(rate) = r.rate.map(paced) {
                windows
                    .entry(r.group.to_ascii_lowercase())
                    .or_insert_with(|| (rate, Arc::new(Mutex::new(SlidingWindow::new(rate)))));
            }
        }
        let rules: Box<[Rule]> = settings
            .rules
            .iter()
            .map(|r| {
                let group = r.group.to_ascii_lowercase();
                Rule {
                    rate: windows.get(&group).cloned(),
                    group: Arc::from(group),
                    patterns: r.patterns.clone(),
                }
            })
            .collect();
        let has_rates = rules.iter().any(|r| r.rate.is_some());
        if let Some(s) = &shared {
            metrics
                .rate_limit_shared_up
                .with_label_values(&[route])
                .set(i64::from(s.is_up()));
        }
        let labels = GroupLabels::new(rules.iter().map(|r| &*r.group));
        RouteLimits {
            route: Arc::from(route),
            settings,
            rules,
            has_rates,
            learned: Learned::default(),
            blocks: ArcSwap::from_pointee(Vec::new()),
            labels,
            released: tokio::sync::Semaphore::new(1),
            metrics,
            shared,
            tasks,
            shutdown,
        }
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The settings.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// The gate of requests a block held, once it has ended: one permit, held from the request's
    /// departure until the upstream's answer. Released together they could spend the upstream's
    /// fresh window at once and start a new penalty; one at a time, the first `429` blocks the
    /// group again before the next one leaves. (Fair: they leave in the order they came.)
    pub fn released(&self) -> &tokio::sync::Semaphore {
        &self.released
    }

    /// The shared view, when replicas share the limits.
    pub fn shared(&self) -> Option<&Arc<SharedLimits>> {
        self.shared.as_ref()
    }

    fn count(&self, group: &str, source: &str) {
        let label = self.labels.label(group);
        self.metrics
            .rate_limited
            .with_label_values(&[&*self.route, &*label, source])
            .inc();
    }

    /// Decides on a request of `method` to `path` (no query) at `now`.
    pub fn admit(&self, method: &Method, path: &str, now: Instant, pass: Pass) -> Admit {
        let shape = self.learned.shape(method, path);
        let blocks = self.blocks.load();
        if blocks.is_empty() && !self.has_rates {
            return Admit::Go(shape);
        }
        let rule = self
            .rules
            .iter()
            .position(|r| r.patterns.iter().any(|p| p.matches(method, path)));
        let group: Option<Arc<str>> = match rule {
            Some(i) => Some(self.rules[i].group.clone()),
            None => self.learned.group(shape),
        };
        let deadline = pass.deadline.unwrap_or(now + self.settings.max_wait);
        let mut pass = Pass {
            deadline: Some(deadline),
            ..pass
        };
        let block = blocks
            .iter()
            .filter(|b| b.until > now && b.covers(group.as_deref()))
            .max_by_key(|b| b.until);
        if let Some(b) = block {
            let label: Arc<str> = match &b.group {
                Some(g) => g.clone(),
                None => Arc::from(WHOLE_ROUTE),
            };
            if !pass.counted {
                self.count(&label, Source::Blocked.label());
                pass.counted = true;
            }
            if self.settings.mode == Mode::Hold && b.until <= deadline {
                return Admit::Later(Box::new(Later {
                    wait: Wait::Block(b.until),
                    pass,
                    group: label,
                }));
            }
            return Admit::Refuse {
                group: label,
                retry_after: b.until - now,
            };
        }
        // A rate belongs to its group: an endpoint no rule lists, learned to be in a group
        // with a rate, is paced by it too (every rule of a group shares one window).
        let rated = rule.or_else(|| {
            let g = group.as_deref()?;
            self.rules
                .iter()
                .position(|r| r.rate.is_some() && &*r.group == g)
        });
        let Some(i) = rated.filter(|i| pass.granted != Some(*i)) else {
            return Admit::Go(shape);
        };
        let Some((_, window)) = &self.rules[i].rate else {
            return Admit::Go(shape);
        };
        let group = self.rules[i].group.clone();
        if self.shared.as_ref().is_some_and(|s| s.is_up()) {
            return Admit::Later(Box::new(Later {
                wait: Wait::Shared(i),
                pass,
                group,
            }));
        }
        let taken = window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_acquire(now);
        match taken {
            Ok(()) => Admit::Go(shape),
            Err(wait) => self.over_rate(group, now + wait, now, pass),
        }
    }

    /// A request over its group's rate: it waits for room within its deadline, else is refused.
    fn over_rate(&self, group: Arc<str>, room_at: Instant, now: Instant, mut pass: Pass) -> Admit {
        if !pass.counted {
            self.count(&group, Source::Paced.label());
            pass.counted = true;
        }
        if pass.deadline.is_some_and(|d| room_at <= d) {
            return Admit::Later(Box::new(Later {
                wait: Wait::Until(room_at),
                pass,
                group,
            }));
        }
        Admit::Refuse {
            group,
            retry_after: room_at.saturating_duration_since(now),
        }
    }

    /// Takes a place in rule `rule`'s shared window: the next decision, made with the place
    /// taken, or after a wait. Redis unreachable: the local window decides.
    pub async fn take_shared(&self, rule: usize, mut pass: Pass, group: Arc<str>) -> Admit {
        let Some((rate, window)) = &self.rules[rule].rate else {
            pass.granted = Some(rule);
            return Admit::Later(Box::new(Later {
                wait: Wait::Until(Instant::now()),
                pass,
                group,
            }));
        };
        let taken = match &self.shared {
            Some(s) => s.take(&self.rules[rule].group, *rate).await,
            None => None,
        };
        let now = Instant::now();
        let taken = taken.unwrap_or_else(|| {
            window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_acquire(now)
        });
        match taken {
            Ok(()) => {
                pass.granted = Some(rule);
                Admit::Later(Box::new(Later {
                    wait: Wait::Until(now),
                    pass,
                    group,
                }))
            }
            Err(wait) => self.over_rate(group, now + wait, now, pass),
        }
    }

    /// A request of `group` went out before its group was known (the first of an endpoint no
    /// rule lists): when the group has a rate, it takes its place in the window now, so that
    /// the requests that follow make up for it.
    fn count_unpaced(self: &Arc<Self>, group: &str) {
        let Some(i) = self
            .rules
            .iter()
            .position(|r| r.rate.is_some() && &*r.group == group)
        else {
            return;
        };
        let Some((rate, window)) = &self.rules[i].rate else {
            return;
        };
        window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(Instant::now());
        if let Some(shared) = self.shared.clone().filter(|s| s.is_up()) {
            let (group, rate) = (self.rules[i].group.clone(), *rate);
            // Best effort: counted when the shared window has room.
            self.tasks.spawn(async move {
                let _ = shared.take(&group, rate).await;
            });
        }
    }

    /// Learns from an answer of the upstream to a request of `shape`: the group it names, and a
    /// block when it is a `429`, or a `503` with `Retry-After`.
    pub fn observe(self: &Arc<Self>, shape: Shape, status: StatusCode, headers: &HeaderMap) {
        let group = headers
            .get(GROUP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(normalize_group);
        if let Some(g) = &group {
            if self.learned.learn(shape, g) {
                self.count_unpaced(g);
            }
        }
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let wait = match (status, retry_after) {
            (StatusCode::TOO_MANY_REQUESTS, r) => r.unwrap_or(self.settings.default_wait),
            (StatusCode::SERVICE_UNAVAILABLE, Some(r)) => r,
            _ => return,
        };
        let label = group.as_deref().unwrap_or(WHOLE_ROUTE);
        self.count(label, "upstream");
        if wait.is_zero() {
            return;
        }
        let group: Option<Arc<str>> = group.map(Arc::from);
        if self.block(group.clone(), wait, Origin::Upstream) {
            if let Some(shared) = &self.shared {
                let shared = shared.clone();
                self.tasks.spawn(async move {
                    shared.publish_block(group.as_deref(), wait).await;
                });
            }
        }
    }

    /// Blocks `group` (`None`: the whole route) for `wait` from now. Returns whether this
    /// started or extended a block (a shorter one than already held changes nothing).
    pub fn block(
        self: &Arc<Self>,
        group: Option<Arc<str>>,
        wait: Duration,
        origin: Origin,
    ) -> bool {
        let now = Instant::now();
        let until = now + wait;
        let tolerance = match origin {
            Origin::Upstream => Duration::ZERO,
            Origin::Shared => SAME_BLOCK,
        };
        let mut changed = false;
        let mut full = false;
        self.blocks.rcu(|blocks| {
            changed = false;
            full = false;
            let mut next: Vec<Block> = blocks.iter().filter(|b| b.until > now).cloned().collect();
            let len = next.len();
            match next.iter_mut().find(|b| b.group == group) {
                // A block pushed back by Redis (this replica's own, or the same one seen by
                // another) is the same block, give or take the clocks.
                Some(b) if b.until + tolerance >= until => {}
                Some(b) => {
                    b.until = until;
                    changed = true;
                }
                None if len >= MAX_BLOCKS => full = true,
                None => {
                    next.push(Block {
                        group: group.clone(),
                        until,
                    });
                    changed = true;
                }
            }
            next
        });
        let label = group.as_deref().unwrap_or(WHOLE_ROUTE);
        if full {
            tracing::warn!(route = %self.route, group = label, "too many groups blocked at once; this one is not");
        }
        if !changed {
            return false;
        }
        let until_unix = unix_seconds(until, now);
        let gauge = self
            .metrics
            .rate_limit_blocked_until
            .with_label_values(&[&*self.route, &*self.labels.label(label)]);
        // Groups past the label limit share one series: it shows the latest end among them.
        gauge.set(gauge.get().max(until_unix));
        tracing::info!(
            route = %self.route,
            group = label,
            seconds = wait.as_secs_f64(),
            until = until_unix,
            source = match origin {
                Origin::Upstream => "upstream",
                Origin::Shared => "shared",
            },
            "rate limit block started"
        );
        let this = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                () = this.shutdown.cancelled() => return,
            }
            this.end_block(group, until);
        });
        true
    }

    /// Ends a block at its time, unless a later one replaced it.
    fn end_block(&self, group: Option<Arc<str>>, until: Instant) {
        let mut ended = false;
        self.blocks.rcu(|blocks| {
            ended = false;
            blocks
                .iter()
                .filter(|b| {
                    let this = b.group == group && b.until <= until;
                    ended |= this;
                    !this
                })
                .cloned()
                .collect::<Vec<_>>()
        });
        if ended {
            let name = group.as_deref().unwrap_or(WHOLE_ROUTE);
            tracing::info!(route = %self.route, group = name, "rate limit block ended");
        }
    }

    /// The blocks in force: group and when each ends (unix seconds).
    pub fn blocks(&self) -> Vec<(String, f64)> {
        let now = Instant::now();
        self.blocks
            .load()
            .iter()
            .filter(|b| b.until > now)
            .map(|b| (b.label().to_owned(), unix_seconds(b.until, now)))
            .collect()
    }

    /// How many path shapes have a learned group.
    pub fn learned_shapes(&self) -> usize {
        self.learned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(mode: Mode, rules: Vec<LimitRule>) -> Arc<RouteLimits> {
        Arc::new(RouteLimits::new(
            "r",
            LimitSettings {
                mode,
                max_wait: Duration::from_secs(10),
                default_wait: Duration::from_secs(60),
                rules,
            },
            Metrics::new(),
            None,
            TaskTracker::new(),
            CancellationToken::new(),
        ))
    }

    fn rule(group: &str, pattern: &str, rate: Option<&str>) -> LimitRule {
        LimitRule {
            group: group.into(),
            patterns: vec![Pattern::parse(pattern).unwrap()],
            rate: rate.map(|r| r.parse().unwrap()),
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (StatusCode::from_u16(status).unwrap(), h)
    }

    const CALL_LOG: &str = "/restapi/v1.0/account/~/extension/~/call-log";
    const SMS: &str = "/restapi/v1.0/account/~/extension/~/sms";

    #[tokio::test]
    async fn a_429_blocks_the_group_it_names_and_only_that_group() {
        let l = limits(Mode::Reject, vec![]);
        let now = Instant::now();
        // The groups are learned from ordinary answers.
        let Admit::Go(heavy) = l.admit(&Method::GET, CALL_LOG, now, Pass::default()) else {
            panic!()
        };
        let (s, h) = answer(200, &[("X-Rate-Limit-Group", "Heavy")]);
        l.observe(heavy, s, &h);
        let Admit::Go(medium) = l.admit(&Method::POST, SMS, now, Pass::default()) else {
            panic!()
        };
        let (s, h) = answer(200, &[("X-Rate-Limit-Group", "medium")]);
        l.observe(medium, s, &h);
        let (s, h) = answer(
            429,
            &[("X-Rate-Limit-Group", "heavy"), ("Retry-After", "30")],
        );
        l.observe(heavy, s, &h);
        // Another account's call log has the same shape.
        match l.admit(
            &Method::GET,
            "/restapi/v1.0/account/7/extension/9/call-log",
            Instant::now(),
            Pass::default(),
        ) {
            Admit::Refuse { group, retry_after } => {
                assert_eq!(&*group, "heavy");
                assert!(
                    retry_after > Duration::from_secs(28) && retry_after <= Duration::from_secs(30)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            l.admit(&Method::POST, SMS, Instant::now(), Pass::default()),
            Admit::Go(_)
        ));
        assert!(matches!(
            l.admit(&Method::GET, "/unknown", Instant::now(), Pass::default()),
            Admit::Go(_)
        ));
        assert_eq!(l.blocks().len(), 1);
    }

    #[tokio::test]
    async fn a_429_without_a_group_blocks_the_route_and_without_retry_after_the_default_wait() {
        let l = limits(Mode::Reject, vec![]);
        let Admit::Go(s) = l.admit(&Method::GET, "/a", Instant::now(), Pass::default()) else {
            panic!()
        };
        let (st, h) = answer(429, &[]);
        l.observe(s, st, &h);
        match l.admit(&Method::GET, "/b", Instant::now(), Pass::default()) {
            Admit::Refuse { group, retry_after } => {
                assert_eq!(&*group, WHOLE_ROUTE);
                assert!(retry_after > Duration::from_secs(58));
            }
            other => panic!("{other:?}"),
        }
        // A 503 blocks only with Retry-After.
        let l = limits(Mode::Reject, vec![]);
        let (st, h) = answer(503, &[]);
        l.observe(s, st, &h);
        assert!(l.blocks().is_empty());
        let (st, h) = answer(503, &[("Retry-After", "5")]);
        l.observe(s, st, &h);
        assert_eq!(l.blocks().len(), 1);
    }

    #[tokio::test]
    async fn hold_waits_for_a_block_that_ends_within_the_maximum_wait() {
        let l = limits(Mode::Hold, vec![rule("heavy", "GET /x/**", None)]);
        let s = l.learned.shape(&Method::GET, "/x/1");
        let (st, h) = answer(
            429,
            &[("X-Rate-Limit-Group", "heavy"), ("Retry-After", "5")],
        );
        l.observe(s, st, &h);
        let now = Instant::now();
        match l.admit(&Method::GET, "/x/1", now, Pass::default()) {
            Admit::Later(later) => {
                let Wait::Block(t) = later.wait else { panic!() };
                assert!(t > now + Duration::from_secs(4));
            }
            other => panic!("{other:?}"),
        }
        // Past the maximum wait: refused.
        let (st, h) = answer(
            429,
            &[("X-Rate-Limit-Group", "heavy"), ("Retry-After", "50")],
        );
        l.observe(s, st, &h);
        assert!(matches!(
            l.admit(&Method::GET, "/x/1", Instant::now(), Pass::default()),
            Admit::Refuse { .. }
        ));
    }

    #[tokio::test]
    async fn a_rate_paces_its_group_within_the_maximum_wait() {
        let l = limits(Mode::Reject, vec![rule("light", "/a", Some("2/5s"))]);
        let t0 = Instant::now();
        assert!(matches!(
            l.admit(&Method::GET, "/a", t0, Pass::default()),
            Admit::Go(_)
        ));
        assert!(matches!(
            l.admit(&Method::GET, "/a", t0, Pass::default()),
            Admit::Go(_)
        ));
        let later = match l.admit(&Method::GET, "/a", t0, Pass::default()) {
            Admit::Later(later) => later,
            other => panic!("{other:?}"),
        };
        let Wait::Until(room) = later.wait else {
            panic!()
        };
        assert_eq!(room, t0 + Duration::from_millis(5500), "5 s and its slack");
        // At that time there is room again.
        assert!(matches!(
            l.admit(&Method::GET, "/a", room, later.pass),
            Admit::Go(_)
        ));
        // Other paths are not paced.
        assert!(matches!(
            l.admit(&Method::GET, "/b", t0, Pass::default()),
            Admit::Go(_)
        ));
    }

    #[test]
    fn group_names_are_bounded_and_lowercase() {
        assert_eq!(normalize_group(" Heavy ").as_deref(), Some("heavy"));
        for bad in ["", "*", "two words", &"x".repeat(65), "caf\u{e9}"] {
            assert_eq!(normalize_group(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn blocks_are_bounded_and_end_on_their_timer() {
        let l = limits(Mode::Reject, vec![]);
        for i in 0..MAX_BLOCKS + 5 {
            l.block(
                Some(Arc::from(format!("g{i}").as_str())),
                Duration::from_secs(60),
                Origin::Upstream,
            );
        }
        assert_eq!(l.blocks().len(), MAX_BLOCKS);
        let l = limits(Mode::Reject, vec![]);
        assert!(l.block(
            Some(Arc::from("a")),
            Duration::from_millis(50),
            Origin::Upstream
        ));
        assert!(
            !l.block(
                Some(Arc::from("a")),
                Duration::from_millis(10),
                Origin::Shared
            ),
            "shorter"
        );
        let end = Instant::now() + Duration::from_secs(5);
        while !l.blocks().is_empty() {
            assert!(Instant::now() < end, "the block did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
