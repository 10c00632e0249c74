//! Pure functions that decide where a request goes and which headers go with it.
//!
//! Kept free of I/O so they can be tested exhaustively and fuzzed.

use super::upstream::{MalformedTarget, Upstream};

use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Version};

impl From<MalformedTarget> for TargetError {
    fn from(_: MalformedTarget) -> Self {
        TargetError::Malformed
    }
}

/// Why a request target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// CONNECT would make the sidecar a tunnel to anywhere.
    #[error("CONNECT is not supported: the sidecar is not an open proxy.")]
    Connect,
    /// An absolute-form target names a host other than the route's upstream.
    #[error(
        "The request names another host; this sidecar only forwards to its configured upstream."
    )]
    ForeignHost,
    /// The target is not an origin-form path.
    #[error("The request target must be a path starting with '/'.")]
    NotOriginForm,
    /// `.` or `..` segments could climb out of the upstream's base path.
    #[error("The request path contains '.' or '..' segments.")]
    DotSegment,
    /// Something the URI grammar does not allow.
    #[error("The request target is malformed.")]
    Malformed,
}

/// Checks the app's request target and returns the path and query to forward.
///
/// HTTP/1 absolute-form targets (as sent by clients configured with this sidecar as an HTTP
/// proxy) are accepted only when they name the upstream itself or a loopback address (the
/// sidecar); HTTP/2 always carries an `:authority`, which, like `Host`, is ignored.
pub fn check_target(
    method: &Method,
    version: Version,
    uri: &Uri,
    upstream: &Upstream,
) -> Result<PathAndQuery, TargetError> {
    if method == Method::CONNECT {
        return Err(TargetError::Connect);
    }
    if version != Version::HTTP_2 {
        if let Some(auth) = uri.authority() {
            if !names_upstream_or_loopback(auth, uri.scheme(), upstream) {
                return Err(TargetError::ForeignHost);
            }
        }
    }
    let pq = match uri.path_and_query() {
        // An absolute-form target with an empty path (`http://host?q`): the path is `/`.
        Some(pq) if pq.as_str().starts_with('?') => {
            PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| TargetError::Malformed)?
        }
        Some(pq) => pq.clone(),
        None if uri.authority().is_some() => PathAndQuery::from_static("/"),
        None => return Err(TargetError::NotOriginForm),
    };
    if !pq.path().starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    if has_dot_segment(pq.path()) {
        return Err(TargetError::DotSegment);
    }
    Ok(pq)
}

fn names_upstream_or_loopback(auth: &Authority, scheme: Option<&Scheme>, up: &Upstream) -> bool {
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        if ip.is_loopback() {
            return true;
        }
    }
    if !host.eq_ignore_ascii_case(
        up.authority()
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    ) {
        return false;
    }
    let default_port = match scheme {
        Some(s) if *s == Scheme::HTTPS => 443,
        _ => 80,
    };
    let port = auth.port_u16().unwrap_or(default_port);
    // `http://api.example.com/x` sent to the sidecar means "the upstream", whatever its port.
    auth.port_u16().is_none() || port == up.port()
}

/// Whether a path has a `.` or `..` segment, plainly or percent-encoded.
///
/// Upstreams differ in what they treat as a separator before resolving dot segments, so this
/// errs on the safe side: `\` and percent-encoded `/` and `\` separate segments too, and a
/// `;parameter` suffix is ignored (`/a/..;/b` climbs on servlet containers).
pub fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let decoded = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|seg| {
        let seg = seg.split(';').next().unwrap_or(seg);
        seg == "." || seg == ".."
    })
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the
/// proxy-credential headers a proxy consumes.
/// (`strip_hop_by_hop` relies on the order: `Connection` first, `TE` fourth.)
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether `name` is a hop-by-hop header (never forwarded, so never usable for the token).
pub fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// What a request's `Upgrade` header asks for, as far as the sidecar lets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// No upgrade: an ordinary request (also one offering `h2c`, which is dropped).
    None,
    /// A WebSocket handshake: tunnelled once the upstream answers 101.
    WebSocket,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Only a WebSocket upgrade (GET, one `Upgrade: websocket`, `Connection: upgrade`, `Sec-WebSocket-Key` and `Sec-WebSocket-Version`) is forwarded; this request asks for another protocol switch.")]
pub struct UpgradeRefused;

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Decides what a request's `Upgrade` header may do.
///
/// After a protocol switch the connection is a tunnel: bytes go to the upstream with no
/// further check and no token injection. So only the one switch apps need is let through: a
/// plain WebSocket handshake. A lone `Upgrade: h2c` (what `curl --http2` offers over
/// cleartext) is served as the ordinary HTTP/1.1 request it also is, the offer dropped (RFC
/// 9110 7.8 lets a server ignore it). Anything else that names `Upgrade` (a list, another
/// protocol, the header twice, a WebSocket handshake missing its parts) is refused: it is
/// either malformed or an attempt to open a tunnel of another kind.
pub fn upgrade_of(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<Upgrade, UpgradeRefused> {
    let mut lines = headers.get_all(header::UPGRADE).iter();
    let Some(value) = lines.next() else {
        return Ok(Upgrade::None);
    };
    if lines.next().is_some() || version != Version::HTTP_11 {
        return Err(UpgradeRefused);
    }
    let value = value.as_bytes().trim_ascii();
    if value.eq_ignore_ascii_case(b"h2c") {
        return Ok(Upgrade::None);
    }
    let single = |name: &HeaderName| {
        let mut values = headers.get_all(name).iter();
        values
            .next()
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
            && values.next().is_none()
    };
    if value.eq_ignore_ascii_case(b"websocket")
        && method == Method::GET
        && connection_has(headers, "upgrade")
        && single(&SEC_WEBSOCKET_KEY)
        && single(&SEC_WEBSOCKET_VERSION)
    {
        return Ok(Upgrade::WebSocket);
    }
    Err(UpgradeRefused)
}

/// Whether an upstream's 101 answer switches to WebSocket (the only switch the sidecar asks
/// for): exactly one `Upgrade` header, `websocket`.
pub fn switches_to_websocket(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(header::UPGRADE).iter();
    lines
        .next()
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
        && lines.next().is_none()
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The header names listed in `Connection`, other than the usual `close` and `keep-alive`.
/// The raw bytes are split: one non-ASCII byte must not hide the other names.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// Removes hop-by-hop headers and those named in `Connection`. With `keep_upgrade`, the
/// `Upgrade` header and `Connection: upgrade` survive (a protocol switch in progress).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are present: usually none, or
    // only `Connection`, so most messages need no lookup at all.
    let mut present = [false; 8];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // Usually `Connection` says only `keep-alive` or `close`: nothing to collect.
    if present[0] && connection_options(headers).next().is_some() {
        let named: Vec<HeaderName> = connection_options(headers)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| !HOP_BY_HOP.contains(n))
            .collect();
        for name in named {
            // Never let `Connection` remove the headers that decide where the request goes.
            if name == header::HOST {
                continue;
            }
            headers.remove(&name);
        }
    }
    // `TE: trailers` is end-to-end meaningful for HTTP/2 (gRPC).
    let te_trailers = present[3]
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if keep_upgrade && (*name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Prepares the app's headers for the upstream: hop-by-hop headers, `Host`, the app's own
/// credentials and a dropped `h2c` offer's settings go; the caller then inserts the token
/// header.
pub fn prepare_request_headers(headers: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    if !upgrade {
        // Only meaningful with `Upgrade: h2c`, which was dropped; usually named in
        // `Connection` (and so gone already), but not always.
        headers.remove(HTTP2_SETTINGS);
    }
}

/// Total size of a header block as HTTP/2 counts it (name + value + 32 per field).
pub fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        Upstream::parse(s).unwrap()
    }

    #[test]
    fn targets() {
        let u = up("https://api.example.com");
        let get = Method::GET;
        let h1 = Version::HTTP_11;
        let t = |s: &str| check_target(&get, h1, &s.parse().unwrap(), &u);
        assert_eq!(t("/x?y").unwrap().as_str(), "/x?y");
        assert_eq!(
            t("http://evil.example.com/x"),
            Err(TargetError::ForeignHost)
        );
        assert_eq!(t("http://api.example.com/x").unwrap().as_str(), "/x");
        assert_eq!(t("http://api.example.com:443/x").unwrap().as_str(), "/x");
        assert_eq!(
            t("http://api.example.com:444/x"),
            Err(TargetError::ForeignHost)
        );
        assert_eq!(t("http://127.0.0.1:8080/x").unwrap().as_str(), "/x");
        assert_eq!(t("/a/../b"), Err(TargetError::DotSegment));
        assert_eq!(t("/a/%2E%2e/b"), Err(TargetError::DotSegment));
        assert_eq!(t("/a/./b"), Err(TargetError::DotSegment));
        assert!(t("/a/..b/c").is_ok());
        assert!(t("/files/report..pdf").is_ok());
        assert!(t("/.well-known/x;v=1").is_ok());
        assert!(t("/a%2Fb/v1.2").is_ok());
        assert_eq!(t("/a/..%2Fb"), Err(TargetError::DotSegment));
        assert_eq!(t("/a/..;/b"), Err(TargetError::DotSegment));
        assert_eq!(t("/a/%2e%2e%5Cb"), Err(TargetError::DotSegment));
        assert_eq!(t("*"), Err(TargetError::NotOriginForm));
        assert_eq!(
            check_target(
                &Method::CONNECT,
                h1,
                &"api.example.com:443".parse().unwrap(),
                &u
            ),
            Err(TargetError::Connect)
        );
        // HTTP/2's :authority is like Host: ignored.
        assert!(check_target(
            &get,
            Version::HTTP_2,
            &"http://whatever.example/x".parse().unwrap(),
            &u
        )
        .is_ok());
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("authorization", "Bearer app".parse().unwrap());
        h.insert("host", "localhost:8080".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        prepare_request_headers(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["te", "x-keep"]);
    }

    fn upgrade(method: Method, pairs: &[(&'static str, &str)]) -> Result<Upgrade, UpgradeRefused> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        upgrade_of(&method, Version::HTTP_11, &h)
    }

    const WS: [(&str, &str); 4] = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn only_a_plain_websocket_handshake_is_an_upgrade() {
        assert_eq!(upgrade(Method::GET, &WS), Ok(Upgrade::WebSocket));
        let mut upper = WS;
        upper[1] = ("upgrade", "WebSocket");
        assert_eq!(upgrade(Method::GET, &upper), Ok(Upgrade::WebSocket));
        assert_eq!(upgrade(Method::GET, &[]), Ok(Upgrade::None));
        assert_eq!(upgrade(Method::POST, &WS), Err(UpgradeRefused));
        for missing in 0..WS.len() {
            if missing == 1 {
                continue;
            }
            let partial: Vec<_> = WS
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(
                upgrade(Method::GET, &partial),
                Err(UpgradeRefused),
                "{partial:?}"
            );
        }
        for other in [
            "h2c, websocket",
            "websocket, h2c",
            "foo/1",
            "websocket/13",
            "tls/1.2",
            "",
        ] {
            let mut h = WS;
            h[1] = ("upgrade", other);
            assert_eq!(upgrade(Method::GET, &h), Err(UpgradeRefused), "{other}");
        }
        let mut twice = WS.to_vec();
        twice.push(("upgrade", "websocket"));
        assert_eq!(upgrade(Method::GET, &twice), Err(UpgradeRefused));
        let mut with_h2c = WS.to_vec();
        with_h2c.push(("upgrade", "h2c"));
        assert_eq!(upgrade(Method::GET, &with_h2c), Err(UpgradeRefused));
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(
            upgrade_of(&Method::GET, Version::HTTP_10, &h),
            Err(UpgradeRefused)
        );
        assert_eq!(
            upgrade_of(&Method::GET, Version::HTTP_2, &h),
            Err(UpgradeRefused)
        );
    }

    #[test]
    fn a_lone_h2c_offer_is_dropped() {
        let offer = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ];
        assert_eq!(upgrade(Method::GET, &offer), Ok(Upgrade::None));
        assert_eq!(
            upgrade(Method::POST, &[("upgrade", "H2C")]),
            Ok(Upgrade::None)
        );
        let mut h = HeaderMap::new();
        for (k, v) in offer {
            h.append(k, v.parse().unwrap());
        }
        prepare_request_headers(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        // HTTP2-Settings goes even when `Connection` does not name it.
        let mut h = HeaderMap::new();
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("http2-settings", "AAMAAABk".parse().unwrap());
        prepare_request_headers(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn an_upstream_switch_must_be_to_websocket() {
        let mut h = HeaderMap::new();
        assert!(!switches_to_websocket(&h));
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(switches_to_websocket(&h));
        h.insert("upgrade", "h2c".parse().unwrap());
        assert!(!switches_to_websocket(&h));
        h.insert("upgrade", "websocket".parse().unwrap());
        h.append("upgrade", "websocket".parse().unwrap());
        assert!(!switches_to_websocket(&h));
    }

    #[test]
    fn upgrade_survives() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        prepare_request_headers(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }
}
