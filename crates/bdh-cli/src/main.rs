//! The `bdh` command (its subcommands are the library's).

fn main() -> std::process::ExitCode {
    bdh_cli::main()
}
