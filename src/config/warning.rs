//! Warnings: a configuration that loads but deserves a word. [`super::load`] returns them and
//! the caller logs them (the command line, at WARN, target `token_sidecar::config`), each as one
//! log line: the message and the fields below that are set.

use std::fmt;
use std::net::SocketAddr;

/// One warning: the message of its log line and the fields the line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The log line's message.
    pub message: &'static str,
    /// `route`: the route it is about.
    pub route: Option<String>,
    /// `listen`: the listener's address.
    pub listen: Option<SocketAddr>,
    /// `token`: the token profile it is about.
    pub token: Option<String>,
    /// `option`: the option it is about, as messages name it (``--flag (or `key`)``).
    pub option: Option<String>,
    /// `grant`: the profile's grant.
    pub grant: Option<&'static str>,
    /// `token_url`: the token endpoint.
    pub token_url: Option<String>,
    /// `client_auth`: the profile's client authentication.
    pub client_auth: Option<&'static str>,
    /// `expires`: when a credential expires or expired (RFC 3339).
    pub expires: Option<String>,
}

impl Warning {
    fn new(message: &'static str) -> Self {
        Warning {
            message,
            route: None,
            listen: None,
            token: None,
            option: None,
            grant: None,
            token_url: None,
            client_auth: None,
            expires: None,
        }
    }

    /// A proxy listener off loopback.
    pub fn listener_off_loopback(route: &str, listen: SocketAddr) -> Self {
        Warning {
            route: Some(route.to_owned()),
            listen: Some(listen),
            ..Warning::new(
                "the proxy listener is not on loopback: anything that reaches it can use the token",
            )
        }
    }

    /// A plain-http upstream on a remote host.
    pub fn plain_http_upstream(route: &str) -> Self {
        Warning {
            route: Some(route.to_owned()),
            ..Warning::new("the upstream is plain http on a non-loopback host: the token crosses the network unencrypted")
        }
    }

    /// A plain-http token endpoint on a remote host.
    pub fn plain_http_token_url(token_url: &str) -> Self {
        Warning {
            token_url: Some(token_url.to_owned()),
            ..Warning::new("the token endpoint is plain http on a non-loopback host: credentials cross the network unencrypted")
        }
    }

    /// An option the profile's grant does not use.
    pub fn unused_option(token: &str, option: String, grant: &'static str) -> Self {
        Warning {
            token: Some(token.to_owned()),
            option: Some(option),
            grant: Some(grant),
            ..Warning::new("this option is not used by the profile's grant and is ignored")
        }
    }

    /// An option the profile's client authentication does not use.
    pub fn unused_by_client_auth(token: &str, option: String, client_auth: &'static str) -> Self {
        Warning {
            token: Some(token.to_owned()),
            option: Some(option),
            client_auth: Some(client_auth),
            ..Warning::new(
                "this option is not used by the profile's client authentication and is ignored",
            )
        }
    }

    /// A profile's client certificate that expires within 7 days.
    pub fn token_cert_expires_soon(token: &str, option: String, expires: String) -> Self {
        Warning {
            token: Some(token.to_owned()),
            option: Some(option),
            expires: Some(expires),
            ..Warning::new("the client certificate expires within 7 days (or has expired)")
        }
    }

    /// A route's client certificate that expires within 7 days.
    pub fn route_cert_expires_soon(route: &str, option: String, expires: String) -> Self {
        Warning {
            route: Some(route.to_owned()),
            option: Some(option),
            expires: Some(expires),
            ..Warning::new("the client certificate expires within 7 days (or has expired)")
        }
    }

    /// The Redis client certificate expires within 7 days.
    pub fn redis_cert_expires_soon(option: String, expires: String) -> Self {
        Warning {
            option: Some(option),
            expires: Some(expires),
            ..Warning::new("the client certificate expires within 7 days (or has expired)")
        }
    }

    /// A client assertion or subject token file whose JWT has expired.
    pub fn credential_expired(token: &str, option: String, expires: String) -> Self {
        Warning {
            token: Some(token.to_owned()),
            option: Some(option),
            expires: Some(expires),
            ..Warning::new(
                "the JWT in this file has expired; token requests fail until it is renewed",
            )
        }
    }

    /// A shared key without a shared store.
    pub fn shared_key_without_store(option: String) -> Self {
        Warning {
            option: Some(option),
            ..Warning::new("a shared key is given without a Redis URL; it is not used")
        }
    }

    /// A shared store whose entries are not sealed.
    pub fn unsealed_shared_store() -> Self {
        Warning::new("the shared store is used without --shared-key-file: anyone who can read the Redis keys sees the tokens, and anyone who can write them can make the replicas use a token of their own; seal the entries with a key (see docs/shared-store.md)")
    }

    /// The fields that are set, by name, in the order of the log line.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut push = |name, v: Option<String>| {
            if let Some(v) = v {
                out.push((name, v));
            }
        };
        push("route", self.route.clone());
        push("listen", self.listen.map(|a| a.to_string()));
        push("token", self.token.clone());
        push("option", self.option.clone());
        push("grant", self.grant.map(str::to_owned));
        push("token_url", self.token_url.clone());
        push("client_auth", self.client_auth.map(str::to_owned));
        push("expires", self.expires.clone());
        out
    }
}

/// Unix seconds as an RFC 3339 UTC time, for messages.
pub fn unix_to_rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// The message, then each field that is set as ` name=value`.
impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)?;
        for (name, value) in self.fields() {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// Logs each configuration warning at WARN, one line each, under the target and with the
/// fields the loader's own lines had (`route`, `listen`, `token`, `option`, `grant`,
/// `token_url`, `client_auth`, `expires`; only those set appear), recorded as they were: displayed, `grant` as a string.
pub fn log_warnings(warnings: &[Warning]) {
    for w in warnings {
        tracing::warn!(
            target: "token_sidecar::config",
            route = w.route.as_deref().map(tracing::field::display),
            listen = w.listen.map(tracing::field::display),
            token = w.token.as_deref().map(tracing::field::display),
            option = w.option.as_deref().map(tracing::field::display),
            grant = w.grant,
            token_url = w.token_url.as_deref().map(tracing::field::display),
            client_auth = w.client_auth,
            expires = w.expires.as_deref().map(tracing::field::display),
            "{}",
            w.message
        );
    }
}
