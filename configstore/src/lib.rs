//! `rap-configstore`: the storage/config node (DESIGN.md §5).
//!
//! It will host the cluster's authority group (`rap-authority`), serve
//! get-by-scope / watch-by-scope / list-own-scopes over `ShardService`, and
//! keep cache replicas placed across failure domains. It never talks to
//! PostgreSQL and never accepts writes from nodes.
//!
//! Status: an empty boundary; nothing here is implemented yet.
