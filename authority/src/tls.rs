//! mTLS for storage nodes and a development CA (being written).
