//! `rap-configstore-mutant`: `rap-configstore` built with a rule broken
//! on purpose (feature `mutant-minority-grants`: a leader that lost its
//! quorum keeps granting fences), the teeth of `scripts/nemesis.sh`.
//! Never ship it.

fn main() -> std::process::ExitCode {
    rap_configstore::cli::main()
}
