// mimalloc: fewer CPU µs per request than glibc's malloc on the webhook path, at a similar
// resident size (README, Webhook benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    igsales_ingress::main()
}
