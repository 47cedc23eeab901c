// A per-thread-cache allocator: request handling allocates small buffers
// across two runtime threads, where glibc malloc spent ~6% of the CPU
// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tokengate::cli::main()
}
