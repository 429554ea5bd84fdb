//! `rap-configstore`: the storage/config node (see [`rap_configstore::cli`]).

fn main() -> std::process::ExitCode {
    rap_configstore::cli::main()
}
