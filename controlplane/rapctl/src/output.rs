//! Output for people (aligned tables) and scripts (JSON).

use serde_json::Value;

/// `println!` that does not panic when stdout is closed (`rapctl ... | head`):
/// output nobody reads is dropped.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables: a header row for lists, `FIELD  VALUE` rows for
    /// one object.
    Table,
    /// One JSON document.
    Json,
}

/// Prints `rows` (field, value) as a table, or `json` as JSON.
pub fn print(format: Format, rows: &[(&str, String)], json: &Value) {
    match format {
        Format::Json => crate::outln!("{json:#}"),
        Format::Table => {
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (key, value) in rows {
                crate::outln!("{key:<width$}  {value}");
            }
        }
    }
}
