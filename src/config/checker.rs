//! The checker: turns the text of each setting into its value, and gathers every problem (and
//! every warning) on the way, so that all of them are reported at once.
//!
//! A value comes with the name it is reported under ([`Src`]): `--flag` when the flag (or its
//! variable) gave it, `` `table.key` `` when the file did.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::settings::Setting;
use super::{ConfigErrors, Loaded, Warning, MAX_DURATION};
use crate::secret::{Secret, SecretSource};

/// A value and the name it is reported under.
pub(super) struct Src<T> {
    pub(super) value: T,
    pub(super) key: String,
}

/// A key as messages name it: `key` at the top level, else `table.key` (`admin.listen`,
/// `route[0].upstream`, `token.rc.grant`).
pub(super) fn key_in(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    }
}

/// A setting named both ways, for problems that do not depend on where the value came from:
/// ``--flag (or `table.key`)``.
pub(super) fn either<T>(s: &Setting<T>, table: &str) -> String {
    format!("--{} (or `{}`)", s.flag, key_in(table, s.key))
}

/// The flag's value when given, else the file's, labelled for messages.
pub(super) fn pick<T: Clone, D>(
    flag: &Option<T>,
    file: &Option<T>,
    s: &Setting<D>,
    table: &str,
) -> Option<Src<T>> {
    if let Some(v) = flag {
        return Some(Src {
            value: v.clone(),
            key: format!("--{}", s.flag),
        });
    }
    file.as_ref().map(|v| Src {
        value: v.clone(),
        key: format!("`{}`", key_in(table, s.key)),
    })
}

/// A repeatable flag's values when given, else the file's list, each labelled.
pub(super) fn list<D>(
    flag: &[String],
    file: &Option<Vec<String>>,
    s: &Setting<D>,
    table: &str,
) -> Vec<Src<String>> {
    if !flag.is_empty() {
        return flag
            .iter()
            .map(|v| Src {
                value: v.clone(),
                key: format!("--{}", s.flag),
            })
            .collect();
    }
    file.iter()
        .flatten()
        .map(|v| Src {
            value: v.clone(),
            key: format!("`{}`", key_in(table, s.key)),
        })
        .collect()
}

/// Flag values as the file's text, so that [`pick`] compares like with like.
pub(super) fn path_str(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

pub(super) fn secret_str(v: &Option<super::cli::SecretArg>) -> Option<String> {
    v.as_ref().map(|s| s.0.clone())
}

pub(super) fn u64_str(v: &Option<u64>) -> Option<String> {
    v.map(|n| n.to_string())
}

pub(super) fn bool_str(v: &Option<bool>) -> Option<String> {
    v.map(|b| b.to_string())
}

/// Gathers the problems and warnings of one load.
#[derive(Default)]
pub(super) struct Checker {
    errors: Vec<String>,
    warnings: Vec<Warning>,
}

impl Checker {
    /// Records a problem.
    pub(super) fn err(&mut self, msg: String) {
        self.errors.push(msg);
    }

    /// Records a warning.
    pub(super) fn warn(&mut self, w: Warning) {
        self.warnings.push(w);
    }

    /// The list problems are appended to (the file parser writes there).
    pub(super) fn errors_mut(&mut self) -> &mut Vec<String> {
        &mut self.errors
    }

    /// The problems and warnings so far, as a failure.
    pub(super) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors, self.warnings)
    }

    /// The configuration `build` makes when no problem was found, with the warnings.
    pub(super) fn finish(
        self,
        build: impl FnOnce() -> super::Config,
    ) -> Result<Loaded, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(Loaded {
                config: build(),
                warnings: self.warnings,
            })
        } else {
            Err(self.into_errors())
        }
    }

    /// A duration up to [`MAX_DURATION`]; `default` when not given or not valid.
    pub(super) fn duration(&mut self, src: Option<Src<String>>, default: Duration) -> Duration {
        src.and_then(|s| self.parse_duration(s)).unwrap_or(default)
    }

    /// A given duration, when it is one.
    pub(super) fn parse_duration(&mut self, s: Src<String>) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            // Bounded so that no deadline computed from it can overflow.
            Ok(d) if d > MAX_DURATION => {
                self.err(format!(
                    "{}: `{}` is longer than the maximum of 365 days",
                    s.key, s.value
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(format!(
                    "{}: `{}` is not a duration ({e}); use e.g. 90s, 5m, 1h",
                    s.key, s.value
                ));
                None
            }
        }
    }

    /// Reports a zero duration: `what` names the setting.
    pub(super) fn more_than_zero(&mut self, d: Duration, what: String) {
        if d.is_zero() {
            self.err(format!("{what}: must be more than 0"));
        }
    }

    /// An `IP:port` address.
    /// An `IP:port` address; `localhost:port` is `127.0.0.1:port` (a listener binds one
    /// address, and the loopback one is what `localhost` means here).
    pub(super) fn addr(&mut self, src: Src<String>) -> Option<SocketAddr> {
        let value = src.value.trim();
        if let Some(port) = value
            .strip_prefix("localhost:")
            .or_else(|| value.strip_prefix("LOCALHOST:"))
        {
            if let Ok(port) = port.parse::<u16>() {
                return Some(SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(format!(
                    "{}: `{}` is not an IP:port address (e.g. 127.0.0.1:8080, or localhost:8080)",
                    src.key, src.value
                ));
                None
            }
        }
    }

    /// A whole number; `default` when not given or not valid.
    pub(super) fn number(&mut self, src: Option<Src<String>>, default: u64) -> u64 {
        match src {
            None => default,
            Some(s) => match s.value.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    self.err(format!("{}: `{}` is not a whole number", s.key, s.value));
                    default
                }
            },
        }
    }

    /// A whole number in `range`; `what` names it when no source does (the default is used).
    pub(super) fn count_in(
        &mut self,
        src: Option<Src<String>>,
        default: u64,
        range: RangeInclusive<u64>,
        what: &str,
    ) -> u64 {
        let key = src
            .as_ref()
            .map_or_else(|| what.to_owned(), |s| s.key.clone());
        let n = self.number(src, default);
        if !range.contains(&n) {
            self.err(format!(
                "{key}: {n} is out of range ({}..={})",
                range.start(),
                range.end()
            ));
            return default;
        }
        n
    }

    /// `true`, `yes`, `1`, `on` or their opposites.
    pub(super) fn boolean(&mut self, src: Option<Src<String>>, default: bool) -> bool {
        match src {
            None => default,
            Some(s) => match s.value.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "on" => true,
                "false" | "no" | "0" | "off" => false,
                _ => {
                    self.err(format!("{}: `{}` is not true or false", s.key, s.value));
                    default
                }
            },
        }
    }

    /// One of `options`, each known by `name` (`json or text`).
    pub(super) fn choice<T: Copy>(
        &mut self,
        src: Option<Src<String>>,
        default: T,
        options: &[T],
        name: fn(T) -> &'static str,
    ) -> T {
        let Some(s) = src else { return default };
        if let Some(o) = options.iter().find(|o| name(**o) == s.value) {
            return *o;
        }
        let names: Vec<&str> = options.iter().map(|o| name(*o)).collect();
        self.err(format!(
            "{}: `{}` is not {}",
            s.key,
            s.value,
            names.join(" or ")
        ));
        default
    }

    /// A secret given inline or in a file (one way only); a file must be readable.
    pub(super) fn secret(
        &mut self,
        inline: Option<Src<String>>,
        file: Option<Src<String>>,
        what: &str,
    ) -> Option<SecretSource> {
        match (inline, file) {
            (Some(i), Some(f)) => {
                self.err(format!(
                    "{} and {}: give the {what} one way only",
                    i.key, f.key
                ));
                // Given, if twice: the conflict is the one problem to report.
                Some(SecretSource::File(PathBuf::from(f.value)))
            }
            (Some(i), None) => {
                if i.value.is_empty() {
                    self.err(format!("{}: the {what} is empty", i.key));
                    return None;
                }
                Some(SecretSource::Inline(Secret::new(i.value)))
            }
            (None, Some(f)) => {
                let path = PathBuf::from(&f.value);
                if let Err(e) = crate::secret::read_secret_file(&path) {
                    self.err(format!("{}: {e}", f.key));
                }
                Some(SecretSource::File(path))
            }
            (None, None) => None,
        }
    }
}

impl Checker {
    /// A client certificate and its key (both or neither), which must load and belong
    /// together; one that expires within [`CERT_EXPIRY_WARNING`] is a warning, made by
    /// `warning` from the option's name and the expiry.
    pub(super) fn client_cert(
        &mut self,
        cert: Option<Src<String>>,
        key: Option<Src<String>>,
        warning: impl FnOnce(String, String) -> Warning,
    ) -> Option<crate::tls::ClientCertFiles> {
        let (cert, key) = match (cert, key) {
            (None, None) => return None,
            (Some(c), Some(k)) => (c, k),
            (Some(given), None) | (None, Some(given)) => {
                self.err(format!(
                    "{}: a client certificate needs both its certificate and its key file",
                    given.key
                ));
                return None;
            }
        };
        let files = crate::tls::ClientCertFiles {
            cert: PathBuf::from(&cert.value),
            key: PathBuf::from(&key.value),
        };
        if let Err(e) = files.load() {
            self.err(format!("{} / {}: {e}", cert.key, key.key));
            return Some(files);
        }
        match files.summary() {
            Ok(s) => {
                if crate::tls::expires_within(
                    s.not_after,
                    super::settings::CERT_EXPIRY_WARNING,
                    std::time::SystemTime::now(),
                ) {
                    self.warn(warning(
                        cert.key.clone(),
                        super::warning::unix_to_rfc3339(s.not_after),
                    ));
                }
            }
            Err(e) => self.err(format!("{}: {e}", cert.key)),
        }
        Some(files)
    }
}

/// An absolute URI (RFC 3986 4.3): `scheme:rest`, no white space (token types are URNs,
/// resource indicators URLs).
pub(super) fn is_absolute_uri(s: &str) -> bool {
    !s.contains(char::is_whitespace)
        && s.split_once(':').is_some_and(|(scheme, rest)| {
            !rest.is_empty()
                && scheme.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch))
        })
}

/// A URL as it may be printed in an error: user information and the query, where credentials
/// hide, are replaced.
pub(super) fn printable_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("<redacted>@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(q) => format!("{}{}<redacted>", &tail[..q], &tail[q..q + 1]),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::super::settings::{route, token};
    use super::*;

    fn src(value: &str, key: &str) -> Option<Src<String>> {
        Some(Src {
            value: value.into(),
            key: key.into(),
        })
    }

    #[test]
    fn every_problem_is_gathered_and_nothing_stops_at_the_first() {
        let mut c = Checker::default();
        let d = c.duration(src("soon", "--refresh-margin"), Duration::from_secs(7));
        let a = c.addr(Src {
            value: "nowhere".into(),
            key: "--listen".into(),
        });
        let n = c.number(src("many", "`route[0].retry_body_limit`"), 3);
        let b = c.boolean(src("maybe", "--refresh-on-401"), true);
        c.warn(Warning::unsealed_shared_store());
        assert_eq!((d, a, n, b), (Duration::from_secs(7), None, 3, true));
        let errors = c.into_errors();
        assert_eq!(
            errors.0,
            [
                "--refresh-margin: `soon` is not a duration (expected number at 0); use e.g. 90s, 5m, 1h",
                "--listen: `nowhere` is not an IP:port address (e.g. 127.0.0.1:8080, or localhost:8080)",
                "`route[0].retry_body_limit`: `many` is not a whole number",
                "--refresh-on-401: `maybe` is not true or false",
            ]
        );
        assert_eq!(errors.warnings(), [Warning::unsealed_shared_store()]);
    }

    #[test]
    fn finish_gives_the_configuration_only_without_problems_and_the_warnings_either_way() {
        let config = || -> crate::config::Config { unreachable!("not built with problems") };
        let mut c = Checker::default();
        c.warn(Warning::plain_http_upstream("a"));
        c.err("x: bad".into());
        let e = c.finish(config).unwrap_err();
        assert_eq!(e.0, ["x: bad"]);
        assert_eq!(e.1, [Warning::plain_http_upstream("a")]);
    }

    #[test]
    fn durations() {
        let mut c = Checker::default();
        assert_eq!(
            c.duration(None, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            c.duration(src(" 90s ", "--x"), Duration::ZERO),
            Duration::from_secs(90)
        );
        assert_eq!(
            c.duration(src("366d", "--x"), Duration::ZERO),
            Duration::ZERO
        );
        c.more_than_zero(Duration::ZERO, either(&route::CONNECT_TIMEOUT, "route[1]"));
        c.more_than_zero(Duration::from_millis(1), "--never".into());
        assert_eq!(
            c.errors,
            [
                "--x: `366d` is longer than the maximum of 365 days",
                "--connect-timeout (or `route[1].connect_timeout`): must be more than 0",
            ]
        );
    }

    #[test]
    fn counts_name_their_source_or_else_the_setting() {
        let mut c = Checker::default();
        assert_eq!(
            c.count_in(src("70000", "--max-connections"), 4, 1..=65536, "-"),
            4
        );
        assert_eq!(c.count_in(None, 0, 1..=1024, "--threads"), 0);
        assert_eq!(c.count_in(src("9", "--x"), 4, 1..=65536, "-"), 9);
        assert_eq!(
            c.errors,
            [
                "--max-connections: 70000 is out of range (1..=65536)",
                "--threads: 0 is out of range (1..=1024)",
            ]
        );
    }

    #[test]
    fn booleans_and_choices() {
        let mut c = Checker::default();
        for (v, want) in [("yes", true), ("OFF", false), ("1", true), ("no", false)] {
            assert_eq!(c.boolean(src(v, "--b"), !want), want);
        }
        let names = |a: ClientAuthLike| a.0;
        let options = [ClientAuthLike("basic"), ClientAuthLike("body")];
        assert_eq!(
            c.choice(src("body", "--c"), options[0], &options, names).0,
            "body"
        );
        assert_eq!(c.choice(None, options[1], &options, names).0, "body");
        assert_eq!(
            c.choice(src("form", "--c"), options[0], &options, names).0,
            "basic"
        );
        assert_eq!(c.errors, ["--c: `form` is not basic or body"]);
    }

    #[derive(Clone, Copy)]
    struct ClientAuthLike(&'static str);

    #[test]
    fn secrets_are_given_one_way_never_empty_and_files_must_be_readable() {
        let mut c = Checker::default();
        let both = c.secret(
            src("s", "--client-secret"),
            src("/f", "--client-secret-file"),
            "client secret",
        );
        assert!(matches!(both, Some(SecretSource::File(_))));
        assert!(c
            .secret(src("", "`token.a.password`"), None, "password")
            .is_none());
        let missing = c.secret(
            None,
            src("/nonexistent/secret", "--assertion-file"),
            "assertion",
        );
        assert!(matches!(missing, Some(SecretSource::File(_))));
        assert!(c.secret(None, None, "password").is_none());
        assert_eq!(c.errors.len(), 3, "{:?}", c.errors);
        assert_eq!(
            c.errors[0],
            "--client-secret and --client-secret-file: give the client secret one way only"
        );
        assert_eq!(c.errors[1], "`token.a.password`: the password is empty");
        assert!(
            c.errors[2].starts_with("--assertion-file: "),
            "{}",
            c.errors[2]
        );
    }

    #[test]
    fn the_flag_wins_over_the_file_and_each_is_named_its_own_way() {
        let flag = Some("f".to_owned());
        let file = Some("t".to_owned());
        let s = &token::TOKEN_URL;
        let got = pick(&flag, &file, s, "token.rc").unwrap();
        assert_eq!((got.value.as_str(), got.key.as_str()), ("f", "--token-url"));
        let got = pick(&None, &file, s, "token.rc").unwrap();
        assert_eq!(
            (got.value.as_str(), got.key.as_str()),
            ("t", "`token.rc.token_url`")
        );
        assert!(pick::<String, _>(&None, &None, s, "token.rc").is_none());
        assert_eq!(
            either(s, "token.rc"),
            "--token-url (or `token.rc.token_url`)"
        );
        assert_eq!(key_in("", "threads"), "threads");

        let hosts = list(
            &[],
            &Some(vec!["a".into(), "b".into()]),
            &route::ALLOWED_HOST,
            "route[2]",
        );
        let keys: Vec<&str> = hosts.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["`route[2].allowed_hosts`"; 2]);
        let hosts = list(
            &["c".into()],
            &Some(vec!["a".into()]),
            &route::ALLOWED_HOST,
            "route[2]",
        );
        assert_eq!((hosts.len(), hosts[0].key.as_str()), (1, "--allowed-host"));
    }

    #[test]
    fn printed_urls_hide_credentials() {
        assert_eq!(
            printable_url("https://u:pw@api.example.com/a?key=s#f"),
            "https://<redacted>@api.example.com/a?<redacted>"
        );
        assert_eq!(
            printable_url("http://127.0.0.1:9/x"),
            "http://127.0.0.1:9/x"
        );
        assert_eq!(printable_url("not a url"), "not a url");
    }
}
