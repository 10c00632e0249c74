//! A TOML config file: `config::file::parse`, `config::file::expand` and `config::load`.
//! Invariants: `fuzz/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_config_file(data));
