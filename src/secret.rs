//! Secrets: values that must never reach a log line, a metric, an error body or `Debug` output,
//! and that are wiped from memory when dropped.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

/// The largest secret or token file read: credentials are a few kilobytes, and a file that is
/// not one must not cost the sidecar its memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A secret string. `Debug` and `Display` print a placeholder, never the value; the value is
/// overwritten with zeros when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the few places that must send it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from: given inline, or read from a file each time it is needed, so
/// that a rotated Kubernetes Secret is picked up without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Given in the configuration or a flag.
    Inline(Secret),
    /// Read from this file (surrounding whitespace trimmed).
    File(PathBuf),
}

/// Reading a secret file failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error("secret file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than any credential.
    #[error("secret file {path} is larger than {max} bytes", max = MAX_SECRET_FILE_BYTES)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not text.
    #[error("secret file {path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

impl SecretSource {
    /// The secret's current value.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(path) => read_secret_file(path),
        }
    }
}

/// Reads a secret from a file, trimming surrounding whitespace (a trailing newline is usual).
/// Files over [`MAX_SECRET_FILE_BYTES`] are refused without being read whole.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let raw = read_bounded(path)?;
    let text = std::str::from_utf8(&raw).map_err(|_| SecretError::NotText {
        path: path.to_owned(),
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Secret(value.to_owned()))
}

/// Reads a whole file of at most [`MAX_SECRET_FILE_BYTES`]; the buffer is wiped when dropped.
pub fn read_bounded(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let read_err = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(1024));
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(buf)
}

/// `bytes` as a [`Bytes`] whose memory is wiped when its last reference is dropped: for header
/// values and request bodies that carry a credential.
pub fn zeroizing_bytes(bytes: Vec<u8>) -> Bytes {
    Bytes::from_owner(Wiped(Zeroizing::new(bytes)))
}

/// The owner behind [`zeroizing_bytes`].
struct Wiped(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_binary_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_secret_file(&big),
            Err(SecretError::TooLarge { .. })
        ));
        let exact = dir.path().join("exact");
        std::fs::write(&exact, vec![b'a'; MAX_SECRET_FILE_BYTES as usize]).unwrap();
        assert!(read_secret_file(&exact).is_ok());
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(
            read_secret_file(&bin),
            Err(SecretError::NotText { .. })
        ));
    }

    #[test]
    fn zeroizing_bytes_keep_their_content() {
        let b = zeroizing_bytes(b"Bearer abc".to_vec());
        assert_eq!(&b[..], b"Bearer abc");
        let c = b.clone();
        drop(b);
        assert_eq!(&c[..], b"Bearer abc");
    }

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let src = SecretSource::Inline(s);
        assert!(!format!("{src:?}").contains("hunter2"));
    }
}
