//! Unit tests of the refresher's state machine: fakes of the token endpoint and the shared
//! store, tokio's paused clock.
