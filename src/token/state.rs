//! The state file: the current token set, persisted atomically with mode 0600 so that a
//! restart reuses it instead of logging in again (RingCentral counts sessions).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::token::oauth::TokenSet;

/// What is persisted.
#[derive(Serialize, Deserialize)]
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

fn time(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time_ms(secs: u64, ms: Option<u64>) -> SystemTime {
    ms.map_or_else(|| time(secs), |ms| UNIX_EPOCH + Duration::from_millis(ms))
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
        }
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
}

/// Reads the state file; `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
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
    if state.format != 1 || state.access_token.is_empty() {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            reason: "unknown format or empty token".into(),
        });
    }
    Ok(Some(state))
}

/// Writes the state file atomically (temporary file with mode 0600, fsync, rename, fsync of
/// the directory).
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let data = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert!(load(&path).unwrap().is_none());
        let set = TokenSet {
            access_token: Secret::new("AT"),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            refresh_token: Some(Secret::new("RT")),
            refresh_expires_at: None,
            scope: None,
            obtained_at: SystemTime::now(),
        };
        save(&path, &State::new("p", 7, &set)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.token_set().refresh_token.unwrap().expose(), "RT");
        assert!(!format!("{back:?}").contains("AT"));
        std::fs::write(&path, "{garbage").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt") && !err.contains("garbage"), "{err}");
    }
}
