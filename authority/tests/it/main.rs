//! The integration tests of `rap-authority`: one binary, one module per area.

mod network;
mod store;
