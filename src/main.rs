//! The `token-sidecar` binary: everything lives in the library.

// mimalloc instead of the system allocator: hyper allocates and frees a few small objects per
// request (header maps, channels, timers) in bursts of hundreds at high connection counts,
// which glibc's malloc serves from its slower paths: 13 % less user CPU per proxied request
// at 1,000 app connections, 3 % at 64 (docs/benchmarks.md). Its arenas are committed on demand
// (.cargo/config.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(token_sidecar::cli::main());
}
