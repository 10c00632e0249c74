//! The state file: the current token set, persisted atomically with mode 0600 so that a
//! restart reuses it instead of logging in again (RingCentral counts sessions).
//!
//! The file holds the refresh token, so it is treated as both a secret and untrusted input:
//! - written through a temporary file with an unpredictable name, created exclusively
//!   (`O_EXCL`), never through a symbolic link (`O_NOFOLLOW`), with mode 0600 from its first
//!   byte, fsynced, then renamed over the state file;
//! - read without following a symbolic link, only when it is a regular file of this process's
//!   user that no one else can write, and bounded in size;
//! - in a directory that other users cannot write (checked when the configuration is loaded;
//!   a missing directory is created with mode 0700).

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::secret::Secret;
use crate::token::set::{TokenSet, MAX_TOKEN_BYTES};
use crate::token::MAX_VERSION;

/// The largest state file read (two tokens of at most 16 KiB and the spent fingerprints).
const MAX_STATE_BYTES: u64 = 128 * 1024;

/// Fingerprints of spent refresh tokens kept: enough for every rotation of a long outage.
pub const MAX_SPENT: usize = 32;

/// What is persisted.
#[derive(Clone, Serialize, Deserialize)]
pub struct State {
    /// Format version of the file.
    pub format: u32,
    /// Identifies the configuration the tokens belong to (token URL, client id, grant).
    pub profile: String,
    /// Token version.
    pub version: u64,
    /// The access token.
    pub access_token: String,
    /// Unix seconds.
    pub obtained_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// The newest refresh token.
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub refresh_token_expires_at: Option<u64>,
    /// Granted scopes.
    pub scope: Option<String>,
    /// `obtained_at` in milliseconds, for schedules of short-lived tokens.
    #[serde(default)]
    pub obtained_at_ms: Option<u64>,
    /// `expires_at` in milliseconds.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Fingerprints ([`crate::token::fingerprint`]) of refresh tokens that were exchanged or
    /// rejected: never sent again, across restarts and replicas. Never the tokens themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spent_refresh_tokens: Vec<String>,
}

impl Drop for State {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(rt) = self.refresh_token.as_mut() {
            rt.zeroize();
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("profile", &self.profile)
            .field("version", &self.version)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A time from unix seconds; values past the year 9999 are clamped there (hostile input must
/// not overflow `SystemTime`).
fn time(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s.min(MAX_UNIX_SECS))
}

const MAX_UNIX_SECS: u64 = 253_402_300_799;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time_ms(secs: u64, ms: Option<u64>) -> SystemTime {
    ms.map_or_else(
        || time(secs),
        |ms| UNIX_EPOCH + Duration::from_millis(ms.min(MAX_UNIX_SECS * 1000)),
    )
}

impl State {
    /// The state for a token set.
    pub fn new(profile: &str, version: u64, set: &TokenSet) -> Self {
        State {
            format: 1,
            profile: profile.to_owned(),
            version,
            access_token: set.access_token.expose().to_owned(),
            obtained_at: secs(set.obtained_at),
            expires_at: secs(set.expires_at),
            refresh_token: set.refresh_token.as_ref().map(|s| s.expose().to_owned()),
            refresh_token_expires_at: set.refresh_expires_at.map(secs),
            scope: set.scope.clone(),
            obtained_at_ms: Some(millis(set.obtained_at)),
            expires_at_ms: Some(millis(set.expires_at)),
            spent_refresh_tokens: Vec::new(),
        }
    }

    /// The same state with the fingerprints of spent refresh tokens.
    pub fn with_spent(mut self, spent: impl IntoIterator<Item = String>) -> Self {
        self.spent_refresh_tokens = spent.into_iter().collect();
        self
    }

    /// Back to a token set.
    pub fn token_set(&self) -> TokenSet {
        TokenSet {
            access_token: Secret::new(self.access_token.clone()),
            expires_at: time_ms(self.expires_at, self.expires_at_ms),
            refresh_token: self.refresh_token.clone().map(Secret::new),
            refresh_expires_at: self.refresh_token_expires_at.map(time),
            scope: self.scope.clone(),
            obtained_at: time_ms(self.obtained_at, self.obtained_at_ms),
        }
    }

    /// Checks a state read from outside the process (a file, the shared store): whatever it
    /// holds, a usable state has a known format, a version a newer one can follow, tokens of a
    /// sane size that a header can carry, and a bounded list of fingerprints. Returns why not.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.format != 1 {
            return Err("unknown format");
        }
        if self.version == 0 || self.version >= MAX_VERSION {
            return Err("version out of range");
        }
        if self.access_token.is_empty()
            || self.access_token.len() > MAX_TOKEN_BYTES
            || http::HeaderValue::from_str(&self.access_token).is_err()
        {
            return Err("unusable access token");
        }
        if self
            .refresh_token
            .as_ref()
            .is_some_and(|r| r.is_empty() || r.len() > MAX_TOKEN_BYTES)
        {
            return Err("unusable refresh token");
        }
        if self.spent_refresh_tokens.len() > MAX_SPENT
            || self.spent_refresh_tokens.iter().any(|f| f.len() > 64)
        {
            return Err("too many spent refresh tokens");
        }
        if self.profile.len() > 4096 || self.scope.as_ref().is_some_and(|s| s.len() > 4096) {
            return Err("oversized field");
        }
        Ok(())
    }
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a state file of this format.
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why (never quotes the content).
        reason: String,
    },
    /// The file or its directory could have been written by someone else.
    #[error("state file {path} is not trusted: {reason}")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Checks where a state file is to live, when the configuration is loaded: its directory must
/// not be writable by other users (anyone who can write there can replace the file with
/// tokens of their own), and the path must not be a directory. A directory that does not exist
/// yet is fine: it is created with mode 0700.
pub fn check_location(path: &Path) -> Result<(), String> {
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(format!("{} is not a directory", dir.display()));
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            return Err(format!(
                "{}: a part of the path is not a directory",
                dir.display()
            ));
        }
        Ok(m) if m.mode() & 0o002 != 0 => {
            return Err(format!(
                "the directory {} is writable by every user (mode {:o}): another user could \
                 replace the state file; use a directory only the sidecar can write, e.g. a \
                 subdirectory that does not exist yet (the sidecar creates it with mode 0700)",
                dir.display(),
                m.mode() & 0o7777
            ));
        }
        _ => {}
    }
    // A symbolic link at the path is not followed: it is never read, and the first write
    // replaces the link itself.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory", path.display())),
        _ => Ok(()),
    }
}

/// Reads the state file; `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let untrusted = |reason: String| StateError::Untrusted {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: the path is a symbolic link.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(untrusted("it is a symbolic link".into()))
        }
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let meta = file.metadata().map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(untrusted("it is not a regular file".into()));
    }
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(untrusted(format!(
            "it belongs to user {}, not to this process's user {uid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "other users can write it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let mut data = Zeroizing::new(Vec::new());
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
    if data.len() as u64 > MAX_STATE_BYTES {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            reason: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    let state: State = serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        // serde_json's messages name the position and expected type, not the content.
        reason: format!(
            "line {} column {}: {:?}",
            e.line(),
            e.column(),
            e.classify()
        ),
    })?;
    state.validate().map_err(|reason| StateError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    })?;
    Ok(Some(state))
}

/// Writes the state file atomically: a temporary file with an unpredictable name, created
/// exclusively and never through a symbolic link, mode 0600, fsynced, renamed over the state
/// file, then the directory fsynced. A missing directory is created with mode 0700.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = parent_dir(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    check_location(path).map_err(|reason| StateError::Untrusted {
        path: path.to_owned(),
        reason,
    })?;
    let file_name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let data =
        Zeroizing::new(
            serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            })?,
        );
    let tmp = dir.join(format!(".{file_name}.{:016x}.tmp", rand::random::<u64>()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set() -> TokenSet {
        TokenSet {
            access_token: Secret::new("AT"),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            refresh_token: Some(Secret::new("RT")),
            refresh_expires_at: None,
            scope: None,
            obtained_at: SystemTime::now(),
        }
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert!(load(&path).unwrap().is_none());
        save(
            &path,
            &State::new("p", 7, &set()).with_spent(["fp".to_owned()]),
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.spent_refresh_tokens, ["fp"]);
        assert_eq!(back.token_set().refresh_token.unwrap().expose(), "RT");
        assert!(!format!("{back:?}").contains("AT"));
        std::fs::write(&path, "{garbage").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt") && !err.contains("garbage"), "{err}");
        // Nothing but the state file is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_missing_directory_is_created_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("s.json");
        save(&path, &State::new("p", 1, &set())).unwrap();
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn links_and_shared_directories_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        save(&real, &State::new("p", 1, &set())).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(load(&link), Err(StateError::Untrusted { .. })));
        // A write replaces the link, not its target.
        save(&link, &State::new("p", 2, &set())).unwrap();
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(load(&real).unwrap().unwrap().version, 1);
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(load(&real), Err(StateError::Untrusted { .. })));
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let inside = open.join("s.json");
        assert!(check_location(&inside)
            .unwrap_err()
            .contains("writable by every user"));
        assert!(matches!(
            save(&inside, &State::new("p", 1, &set())),
            Err(StateError::Untrusted { .. })
        ));
        assert!(!inside.exists());
    }

    #[test]
    fn hostile_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let write = |json: &str| {
            std::fs::write(&path, json).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            load(&path)
        };
        let base = |version: &str, at: &str| {
            format!(
                r#"{{"format":1,"profile":"p","version":{version},"access_token":"{at}","obtained_at":1,"expires_at":99999999999999,"refresh_token":null,"refresh_token_expires_at":null,"scope":null}}"#
            )
        };
        assert!(write(&base("3", "ok")).is_ok());
        for (version, at) in [
            ("0", "ok"),
            ("9223372036854775807", "ok"),
            ("18446744073709551615", "ok"),
            ("-1", "ok"),
            ("1.5", "ok"),
            ("3", ""),
            ("3", "a\\nb"),
        ] {
            assert!(write(&base(version, at)).is_err(), "{version} {at}");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(write(&base("3", &huge)).is_err());
        // Far-future times do not overflow.
        let st = write(&base("3", "ok")).unwrap().unwrap();
        let _ = st.token_set();
    }
}
