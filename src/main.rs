fn main() -> std::process::ExitCode {
    etcdbr::cli::main()
}
