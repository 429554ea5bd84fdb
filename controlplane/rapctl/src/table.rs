//! Aligned tables for people, and the formatting of values in them.
//!
//! Every cell passes through [`crate::errors::clean`]: names and facts come
//! from the server (and, through it, from node agents), so control
//! characters are escaped before they reach a terminal.
//!
//! Times: tables show RFC 3339 UTC (`2025-01-02T03:04:05Z`); JSON keeps
//! the wire's integer `*_unix_ms` fields.

use crate::errors::clean;
use crate::output::Format;
use serde_json::Value;

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells are cleaned; missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|cell| clean(cell)).collect());
    }

    /// The table as lines of text, header first.
    pub fn lines(&self) -> Vec<String> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let render = |cells: &mut dyn Iterator<Item = &str>| {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.next().unwrap_or("");
                if i + 1 == widths.len() {
                    line.push_str(cell);
                } else {
                    let pad = width.saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            line.trim_end().to_string()
        };
        let mut lines = vec![render(&mut self.headers.iter().copied())];
        for row in &self.rows {
            lines.push(render(&mut row.iter().map(String::as_str)));
        }
        lines
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        for line in self.lines() {
            crate::outln!("{line}");
        }
    }
}

/// Prints a list: `json` as JSON, else the table.
pub fn print_list(format: Format, table: &Table, json: &Value) {
    match format {
        Format::Json => crate::outln!("{json:#}"),
        Format::Table => table.print(),
    }
}

/// Prints one object: `json` as JSON, else `FIELD  VALUE` rows (cleaned).
pub fn print_object(format: Format, rows: &[(&str, String)], json: &Value) {
    let cleaned: Vec<(&str, String)> = rows.iter().map(|(k, v)| (*k, clean(v))).collect();
    crate::output::print(format, &cleaned, json);
}

/// `-` for an empty value, else the value.
pub fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_string()
    } else {
        value.to_string()
    }
}

/// A unix-ms instant as RFC 3339 UTC with second precision; `-` for 0.
pub fn time(unix_ms: i64) -> String {
    rap_proto::time::rfc3339_utc(unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_cells_are_cleaned() {
        let mut table = Table::new(&["ID", "NAME", "NOTE"]);
        table.row(vec!["a".into(), "long-name".into(), "x".into()]);
        table.row(vec!["bbbb".into(), "n\u{1b}".into()]);
        assert_eq!(
            table.lines(),
            vec![
                "ID    NAME       NOTE",
                "a     long-name  x",
                "bbbb  n\\u{1b}",
            ]
        );
    }
}
