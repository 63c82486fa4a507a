//! `pixel`: the PixelLLM command line with the built-in output heads.
use pixel_model::heads::HeadRegistry;
use std::process::ExitCode;

/// The training step allocates and frees many tensor buffers from two threads; glibc's malloc
/// hands the large ones back to the kernel each time (page faults took ~5% of a data-parallel
/// step), mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pixel_cli::run(HeadRegistry::builtin())
}
