//! Integration tests of rap-core: the cluster CA, TLS files, reloadable
//! identities.

mod tls;
