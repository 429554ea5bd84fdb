//! Keyset pagination shared by list calls: the page token is the last id
//! of the previous page.

use crate::limits::{PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use rap_proto::pb::PageRequest;

/// A page request, normalized.
#[derive(Clone, Debug)]
pub struct Page {
    /// Rows to return (1..=PAGE_SIZE_MAX).
    pub size: i64,
    /// Return only rows whose key sorts after this ("" = from the start).
    pub after: String,
}

impl Page {
    /// From the wire (absent → defaults; sizes above the limit are capped).
    pub fn from_pb(page: Option<&PageRequest>) -> Page {
        let size = page.map(|p| p.page_size).unwrap_or(0);
        let size = if size == 0 {
            PAGE_SIZE_DEFAULT
        } else {
            size.min(PAGE_SIZE_MAX)
        };
        Page {
            size: i64::from(size),
            after: page.map(|p| p.page_token.clone()).unwrap_or_default(),
        }
    }

    /// `LIMIT` to query with: one more than the page, to know whether a
    /// next page exists.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// Cuts `rows` to the page and returns the next page token ("" at the
    /// end).
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> String) -> String {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() > size {
            rows.truncate(size);
            rows.last().map(key).unwrap_or_default()
        } else {
            String::new()
        }
    }
}
