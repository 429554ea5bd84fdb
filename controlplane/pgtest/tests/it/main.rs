//! Integration tests of the private PostgreSQL harness: one test binary,
//! one module per concern.

mod cleanup;
mod databases;
mod owned;
mod socket;
mod support;
