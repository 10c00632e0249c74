//! The fixed destination of a route: scheme, authority and base path, parsed once from the
//! configured URL. A leaf: the configuration checks upstream URLs with it.

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// A request target that cannot be joined onto the upstream's base path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("The request target is malformed.")]
pub struct MalformedTarget;

/// The fixed destination of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// The URL's path without a trailing `/`; empty for the root.
    base_path: String,
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamUrlError {
    /// Not a URL at all.
    #[error("not a valid URL: {0}")]
    Invalid(String),
    /// Only `http` and `https` are forwarded to.
    #[error("the scheme must be http or https")]
    Scheme,
    /// A host is required.
    #[error("the URL must name a host")]
    NoHost,
    /// Credentials do not belong in the URL.
    #[error("the URL must not contain user information (credentials come from the token)")]
    UserInfo,
    /// The query string of a request is the app's.
    #[error("the URL must not contain a query or fragment")]
    Query,
}

impl Upstream {
    /// Parses a base URL such as `https://platform.ringcentral.com` or `http://127.0.0.1:9000/api`.
    pub fn parse(url: &str) -> Result<Self, UpstreamUrlError> {
        if url.contains('#') {
            return Err(UpstreamUrlError::Query);
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamUrlError::Invalid(e.to_string()))?;
        let scheme = uri.scheme().cloned().ok_or(UpstreamUrlError::Scheme)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(UpstreamUrlError::Scheme);
        }
        let authority = uri.authority().cloned().ok_or(UpstreamUrlError::NoHost)?;
        if authority.as_str().contains('@') {
            return Err(UpstreamUrlError::UserInfo);
        }
        if authority.host().is_empty() {
            return Err(UpstreamUrlError::NoHost);
        }
        if uri.query().is_some() {
            return Err(UpstreamUrlError::Query);
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            scheme,
            authority,
            base_path,
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Whether TLS is used.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The base path (no trailing `/`).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The upstream's path and query for `target` (the app's path and query): the base path
    /// joined with it.
    pub fn path(&self, target: PathAndQuery) -> Result<PathAndQuery, MalformedTarget> {
        if self.base_path.is_empty() {
            return Ok(target);
        }
        let mut s = String::with_capacity(self.base_path.len() + target.as_str().len());
        s.push_str(&self.base_path);
        s.push_str(target.as_str());
        PathAndQuery::try_from(s).map_err(|_| MalformedTarget)
    }

    /// The absolute URI a request for `target` (the app's path and query) is sent to.
    pub fn join(&self, target: &PathAndQuery) -> Result<Uri, MalformedTarget> {
        let pq = self.path(target.clone())?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| MalformedTarget)
    }

    pub(crate) fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        Upstream::parse(s).unwrap()
    }

    #[test]
    fn parse_upstreams() {
        assert_eq!(up("https://a.example.com/").base_path(), "");
        assert_eq!(up("http://127.0.0.1:9/api/v1/").base_path(), "/api/v1");
        assert_eq!(Upstream::parse("ftp://x"), Err(UpstreamUrlError::Scheme));
        assert_eq!(
            Upstream::parse("https://u:p@x"),
            Err(UpstreamUrlError::UserInfo)
        );
        assert_eq!(
            Upstream::parse("https://x/?a=b"),
            Err(UpstreamUrlError::Query)
        );
        assert!(Upstream::parse("/just/a/path").is_err());
        assert!(Upstream::parse("not a url").is_err());
    }

    #[test]
    fn join_paths() {
        let u = up("https://api.example.com/base/");
        let pq = PathAndQuery::from_static("/a/b?c=d");
        assert_eq!(
            u.join(&pq).unwrap().to_string(),
            "https://api.example.com/base/a/b?c=d"
        );
        let root = up("http://127.0.0.1:8000");
        assert_eq!(
            root.join(&pq).unwrap().to_string(),
            "http://127.0.0.1:8000/a/b?c=d"
        );
        // `//host` stays a path on the upstream.
        let pq = PathAndQuery::from_static("//evil.example.com/x");
        assert_eq!(
            u.join(&pq).unwrap().authority().unwrap().as_str(),
            "api.example.com"
        );
    }
}
