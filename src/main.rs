//! `etcdbrctl`: the command line of [`etcdbr`], a drop-in replacement for gardener's etcdbrctl.

fn main() -> std::process::ExitCode {
    etcdbr::cli::main()
}
