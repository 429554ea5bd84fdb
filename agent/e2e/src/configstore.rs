//! `rap-configstore`, exactly as it ships, for the end-to-end tests that
//! run storage nodes as processes (and kill them).

fn main() -> std::process::ExitCode {
    rap_configstore::cli::main()
}
