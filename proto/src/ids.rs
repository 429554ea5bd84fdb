//! Typed ids and counters. An id is parsed once at the edge
//! ([`std::str::FromStr`]) and carried typed afterwards, so a `NodeId` can
//! never be passed where a `ClusterId` is meant.
//!
//! Ids are DNS labels: 1 to [`ID_BYTES_MAX`] bytes of `a-z`, `0-9` and `-`,
//! not starting or ending with `-`. That keeps them safe in scope strings,
//! URI SANs (`rap://cluster/<cluster_id>/node/<node_id>`) and file names.

use crate::error::{Error, Result};
use crate::limits::ID_BYTES_MAX;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Checks the id grammar; `kind` names the id in the error.
pub fn validate_id(kind: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("is empty")
    } else if value.len() > ID_BYTES_MAX {
        Some("is longer than 63 bytes")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may contain only a-z, 0-9 and '-'")
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("may not start or end with '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidId {
            kind,
            value: truncate_for_error(value),
            reason,
        }),
    }
}

/// Shortens untrusted input before it goes into an error message.
pub(crate) fn truncate_for_error(value: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    if value.chars().count() <= SHOWN_CHARS_MAX {
        value.to_string()
    } else {
        let mut shown: String = value.chars().take(SHOWN_CHARS_MAX).collect();
        shown.push('…');
        shown
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an id.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate_id($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A cluster: the unit of authority, trust root and Raft group.
    ClusterId,
    "cluster id"
);
string_id!(
    /// A node: one host identity held by its `rap-node-agent`.
    NodeId,
    "node id"
);
string_id!(
    /// An organization (tenant) served by the fabric.
    OrgId,
    "org id"
);
string_id!(
    /// A role a node may be assigned per cluster (e.g. `entry-node`).
    RoleName,
    "role name"
);
string_id!(
    /// A join token's public id (the `<id>` of `rapjt.<id>.<secret>`).
    JoinTokenId,
    "join token id"
);
string_id!(
    /// A join request waiting for review.
    JoinRequestId,
    "join request id"
);
string_id!(
    /// A cluster-scoped node group (inventory folder; grants nothing).
    GroupId,
    "group id"
);

macro_rules! counter {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

counter!(
    /// The cluster's authority epoch. Changes only on promotion or re-seed,
    /// never on ordinary Raft elections (that is the *raft term*).
    AuthorityTerm
);
counter!(
    /// Sequence number of a fencing token within one authority term.
    FenceSeq
);
counter!(
    /// Version of one snapshot scope; strictly increases per scope.
    SnapshotVersion
);
counter!(
    /// Generation of a cluster's trust root; each rotation adds one.
    TrustGeneration
);
counter!(
    /// A Raft log index.
    LogIndex
);

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the id grammar accepts DNS labels and refuses everything else
    // with a typed error. Method: table of good and bad inputs.
    #[test]
    fn id_grammar() {
        for good in ["a", "c1", "node-7", "0", &"x".repeat(ID_BYTES_MAX)] {
            assert!(NodeId::new(good).is_ok(), "{good} should be valid");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "a b",
            "a:b",
            "é",
            &"x".repeat(ID_BYTES_MAX + 1),
        ] {
            match ClusterId::new(bad) {
                Err(Error::InvalidId { kind, .. }) => assert_eq!(kind, "cluster id"),
                other => panic!("{bad:?} should be refused, got {other:?}"),
            }
        }
    }

    // Goal: ids survive a serde round trip and refuse invalid input there
    // too. Method: JSON encode/decode.
    #[test]
    fn id_serde() {
        let id = NodeId::new("n1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"n1\"");
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<NodeId>("\"N/1\"").is_err());
    }
}
