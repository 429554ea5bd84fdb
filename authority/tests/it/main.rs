//! The integration tests of `rap-authority`: one binary, one module per area.

mod cache;
mod network;
mod store;
