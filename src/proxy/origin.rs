//! Who may use a route: the host a request names, and browsers.
//!
//! A listener on loopback is reachable by every process of the pod, and through them by
//! anything that can make one of them send a request: a web page in a headless browser, an
//! SSRF bug in the app. Two checks close the ways in that need no code in the pod:
//!
//! - **DNS rebinding.** A page on `attacker.example` re-points its name to 127.0.0.1 and the
//!   browser sends it to the sidecar with `Host: attacker.example`. Only hosts that name the
//!   listener (`localhost`, a loopback address, the address the connection came in on) or that
//!   the route allows by name are forwarded.
//! - **Cross-site requests.** A page on any site can send requests to `localhost`. Browsers
//!   mark them with `Origin` and `Sec-Fetch-Site`; such requests are refused unless the route
//!   allows the origin.
//!
//! Pure functions over headers, so they can be tested exhaustively and fuzzed.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `Sec-Fetch-Site` (Fetch Metadata).
pub const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Who may use a route besides processes naming the listener itself.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// Host names (lowercase); `*.example.com` matches any subdomain of example.com.
    pub hosts: Vec<String>,
    /// Browser origins (lowercase `scheme://host[:port]`).
    pub origins: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The host it names is not the listener's nor an allowed one (400).
    #[error("The request names a host this sidecar does not serve; only the listener's own address, localhost and allowed host names are accepted.")]
    Host,
    /// A browser request from another site or an origin not allowed (403).
    #[error("Cross-site browser requests are refused; allow the page's origin on the route to accept them.")]
    CrossSite,
}

/// Checks a configured host name: letters, digits, `-` and `.`, optionally starting with
/// `*.`; no port, no scheme. Returns it lowercase.
pub fn host_pattern(s: &str) -> Result<String, &'static str> {
    let h = s.trim().to_ascii_lowercase();
    let name = h.strip_prefix("*.").unwrap_or(&h);
    if name.is_empty() || name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err("not a host name (e.g. api.internal or *.svc.cluster.local)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("a host name holds only letters, digits, '-' and '.' (no port, no scheme)");
    }
    Ok(h)
}

/// Checks a configured origin: `http` or `https`, a host, an optional port, nothing else.
/// Returns it lowercase.
pub fn origin(s: &str) -> Result<String, &'static str> {
    let o = s.trim().to_ascii_lowercase();
    if o == "null" {
        return Err("`null` cannot be allowed: every sandboxed page and local file sends it");
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return Err("not an origin (scheme://host[:port], e.g. http://localhost:3000)");
    };
    if scheme != "http" && scheme != "https" {
        return Err("an origin's scheme is http or https");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("an origin is scheme://host[:port], without a path");
    }
    let auth: http::uri::Authority = rest
        .parse()
        .map_err(|_| "not an origin (scheme://host[:port], e.g. http://localhost:3000)")?;
    if auth.host().is_empty() {
        return Err("an origin names a host");
    }
    Ok(o)
}

/// Whether `authority` (a `Host` value or HTTP/2 `:authority`) names the listener that
/// accepted the connection on `local`, or a host in `allowed`. The port is not checked: port
/// forwarding changes it, and a rebinding attack is told apart by the name.
pub fn host_allowed(authority: &[u8], local: IpAddr, allowed: &[String]) -> bool {
    // The common cases without parsing.
    for name in [&b"localhost"[..], b"127.0.0.1", b"[::1]"] {
        if let Some(rest) = authority.strip_prefix(name) {
            if rest.is_empty() || (rest[0] == b':' && rest[1..].iter().all(u8::is_ascii_digit)) {
                return true;
            }
        }
    }
    let Ok(text) = std::str::from_utf8(authority) else {
        return false;
    };
    let Ok(auth) = text.parse::<http::uri::Authority>() else {
        return false;
    };
    if auth.as_str().contains('@') {
        return false;
    }
    name_allowed(auth.host(), local, allowed)
}

/// Whether a host (no port; IPv6 in brackets) names the listener or an allowed host.
fn name_allowed(host: &str, local: IpAddr, allowed: &[String]) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return ip.is_loopback() || ip == local.to_canonical();
    }
    allowed
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => host.len().checked_sub(suffix.len() + 1).is_some_and(|cut| {
                cut > 0
                    && host.as_bytes()[cut] == b'.'
                    && host[cut + 1..].eq_ignore_ascii_case(suffix)
            }),
            None => host.eq_ignore_ascii_case(pattern),
        })
}

/// Checks a request's host and browser headers. `authority` is the request's `:authority` or
/// `Host` (`None` for an HTTP/1.0 request without one, which no browser sends).
pub fn check(
    authority: Option<&[u8]>,
    headers: &HeaderMap,
    local: IpAddr,
    allowed: &Allowed,
) -> Result<(), Refused> {
    if let Some(a) = authority {
        if !host_allowed(a, local, &allowed.hosts) {
            return Err(Refused::Host);
        }
    }
    // A request from a program (not a browser) carries neither header: one lookup each.
    let site = headers.get(&SEC_FETCH_SITE);
    let mut origins = headers.get_all(http::header::ORIGIN).iter();
    let origin = origins.next();
    if site.is_none() && origin.is_none() {
        return Ok(());
    }
    if origins.next().is_some() {
        return Err(Refused::CrossSite);
    }
    let explicitly_allowed = origin.is_some_and(|o| origin_listed(o, &allowed.origins));
    if let Some(site) = site {
        let other_site = site.as_bytes().eq_ignore_ascii_case(b"cross-site")
            || site.as_bytes().eq_ignore_ascii_case(b"same-site");
        if other_site && !explicitly_allowed {
            return Err(Refused::CrossSite);
        }
    }
    match origin {
        None => Ok(()),
        Some(_) if explicitly_allowed => Ok(()),
        Some(o) if origin_names_listener(o, local, &allowed.hosts) => Ok(()),
        Some(_) => Err(Refused::CrossSite),
    }
}

fn origin_listed(o: &HeaderValue, listed: &[String]) -> bool {
    let o = o.as_bytes();
    listed.iter().any(|l| l.as_bytes().eq_ignore_ascii_case(o))
}

/// Whether an `Origin` is a page served by the listener itself (or an allowed host).
fn origin_names_listener(o: &HeaderValue, local: IpAddr, hosts: &[String]) -> bool {
    let Ok(text) = o.to_str() else {
        return false;
    };
    let Some(rest) = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.contains(['/', '?', '#']) && host_allowed(rest.as_bytes(), local, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ok(host: &str, allowed: &[&str]) -> bool {
        let allowed: Vec<String> = allowed.iter().map(|a| host_pattern(a).unwrap()).collect();
        host_allowed(host.as_bytes(), LOOP, &allowed)
    }

    #[test]
    fn hosts_that_name_the_listener() {
        for h in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.5.6.7",
            "[::1]",
            "[::1]:9",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(ok(h, &[]), "{h}");
        }
        let pod: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(host_allowed(b"10.1.2.3:8080", pod, &[]));
        assert!(!host_allowed(b"10.1.2.4:8080", pod, &[]));
    }

    #[test]
    fn other_hosts_are_refused() {
        for h in [
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "attacker.example.",
            "localhost.",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "user@localhost",
            "",
            "local host",
            "[::1",
        ] {
            assert!(!ok(h, &[]), "{h}");
        }
        assert!(!host_allowed(b"\xfflocalhost", LOOP, &[]));
    }

    #[test]
    fn allowed_names_and_wildcards() {
        assert!(ok("api.internal:8080", &["api.internal"]));
        assert!(ok("API.Internal", &["api.internal"]));
        assert!(!ok("x.api.internal", &["api.internal"]));
        let w = ["*.svc.cluster.local"];
        assert!(ok("x.ns.svc.cluster.local", &w));
        assert!(ok("x.ns.svc.cluster.local:80", &w));
        assert!(!ok("svc.cluster.local", &w));
        assert!(!ok(".svc.cluster.local", &w));
        assert!(!ok("svc.cluster.local.evil.example", &w));
        assert!(!ok("xsvc.cluster.local", &w));
    }

    #[test]
    fn configured_patterns_and_origins() {
        assert_eq!(host_pattern(" API.internal "), Ok("api.internal".into()));
        assert!(host_pattern("*.svc.cluster.local").is_ok());
        for bad in ["", "*.", "a..b", "host:80", "http://x", "a b", ".x", "x."] {
            assert!(host_pattern(bad).is_err(), "{bad}");
        }
        assert_eq!(
            origin("HTTP://App.example:3000"),
            Ok("http://app.example:3000".into())
        );
        for bad in [
            "null",
            "app.example",
            "ftp://x",
            "http://",
            "http://x/",
            "http://u@x",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }

    fn browser(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn browsers_from_other_sites_are_refused() {
        let none = Allowed::default();
        let host = Some(&b"localhost:8080"[..]);
        let chk = |pairs: &[(&'static str, &str)], allowed: &Allowed| {
            check(host, &browser(pairs), LOOP, allowed)
        };
        assert_eq!(chk(&[], &none), Ok(()));
        assert_eq!(chk(&[("sec-fetch-site", "none")], &none), Ok(()));
        assert_eq!(chk(&[("sec-fetch-site", "same-origin")], &none), Ok(()));
        for refused in [
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![("origin", "http://evil.example")],
            vec![("origin", "null")],
            vec![
                ("origin", "http://localhost:3000"),
                ("sec-fetch-site", "same-site"),
            ],
            vec![
                ("origin", "http://localhost:8080"),
                ("origin", "http://evil.example"),
            ],
            vec![("origin", "http://localhost:8080/path")],
        ] {
            assert_eq!(chk(&refused, &none), Err(Refused::CrossSite), "{refused:?}");
        }
        assert_eq!(
            chk(
                &[
                    ("origin", "http://localhost:8080"),
                    ("sec-fetch-site", "same-origin")
                ],
                &none
            ),
            Ok(())
        );
        let app = Allowed {
            hosts: vec![],
            origins: vec![origin("http://app.example:3000").unwrap()],
        };
        assert_eq!(
            chk(
                &[
                    ("origin", "http://App.example:3000"),
                    ("sec-fetch-site", "cross-site")
                ],
                &app
            ),
            Ok(())
        );
        assert_eq!(
            chk(&[("origin", "http://app.example:3001")], &app),
            Err(Refused::CrossSite)
        );
    }

    #[test]
    fn the_host_is_checked_first() {
        let h = HeaderMap::new();
        assert_eq!(
            check(Some(b"attacker.example"), &h, LOOP, &Allowed::default()),
            Err(Refused::Host)
        );
        assert_eq!(check(None, &h, LOOP, &Allowed::default()), Ok(()));
    }
}
