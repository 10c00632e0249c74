//! The `token-sidecar` binary: everything lives in the library.

fn main() {
    std::process::exit(token_sidecar::cli::main());
}
