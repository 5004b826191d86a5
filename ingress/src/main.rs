fn main() -> std::process::ExitCode {
    igsales_ingress::main()
}
