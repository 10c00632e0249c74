//! The process's exit codes, in one place.

/// Everything went well (also after a graceful shutdown on SIGTERM or SIGINT).
pub const OK: i32 = 0;
/// The sidecar could not start (a port in use, an unreadable CA file), or a `refresh` failed.
pub const START_FAILED: i32 = 1;
/// The command line does not parse (clap's own code), or `dev` in a build without the demo.
pub const USAGE: i32 = 2;
/// The configuration is invalid: every problem is listed (`EX_USAGE` of sysexits.h).
pub const INVALID_CONFIG: i32 = 64;
