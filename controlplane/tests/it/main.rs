//! Integration tests of the control-plane crate's binaries.

mod rapctl;
