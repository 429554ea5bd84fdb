//! `rap-node-agent` built for the end-to-end tests of this package: the
//! same one line as the shipped `agent/src/main.rs`, so the tests run the
//! shipped command line while `rap-node-agent` itself needs no control
//! plane, authority group or storage engine, not even to be tested.

fn main() -> std::process::ExitCode {
    rap_node_agent::cli::main()
}
