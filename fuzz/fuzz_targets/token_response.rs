//! The token endpoint's body: `parse_success`, `parse_error` and `parse_retry_after`.
//! Invariants: `fuzz/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_token_response(data));
