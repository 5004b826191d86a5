fn main() -> std::process::ExitCode {
    igsales_worker::main()
}
