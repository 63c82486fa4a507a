//! `custom-head`: the `pixel` command line with one more head kind, `circle`.
//!
//! `cargo run --release -p custom-head -- demo --config examples/custom-head/demo.toml`
//! trains and evaluates a PixelLLM whose locations are circles; `eval`, `ablate` and `grads`
//! work the same way. Nothing in the pixel-* crates knows this head.
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pixel_cli::run(custom_head::registry())
}
