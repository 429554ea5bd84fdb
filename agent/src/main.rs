//! `rap-node-agent`: the node agent. The command line lives in
//! [`rap_node_agent::cli`].

fn main() -> std::process::ExitCode {
    rap_node_agent::cli::main()
}
