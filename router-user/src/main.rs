fn main() -> std::process::ExitCode {
    router_user::cli::main()
}
