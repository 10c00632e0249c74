//! The `token-sidecar` binary: everything lives in the library.

// mimalloc instead of the system allocator: hyper allocates and frees a few small objects per
// request (header maps, channels, timers) in bursts of hundreds at high connection counts,
// which glibc's malloc serves from its slower paths. About 10 % less CPU per proxied request
// (docs/benchmarks.md), and memory freed after a burst goes back to the OS within a second.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(token_sidecar::cli::main());
}
