//! The daemons' logs: on stderr, filtered by `RUST_LOG` (else each
//! binary's default), as human-readable lines or, with `--log-format
//! json`, one JSON object per line. A JSON line has the event's fields at
//! the top level (`timestamp`, `level`, `target`, `message`, the event's
//! own fields) beside the fields every line of the process carries
//! (`cluster_id` and `node_id` of a storage node or an agent); an event's
//! own field of the same name wins.
//!
//! Secrets never go to a log: tokens, keys and TOTP secrets are not
//! fields of any event (a test reads a whole platform's logs for them).

use serde::{Deserialize, Serialize};
use std::fmt;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How the logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The values `--log-format` takes.
pub const LOG_FORMATS: &str = "text, json";

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}; one of: {LOG_FORMATS}"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the process's log output: `format`, filtered by `RUST_LOG`
/// or else `default_filter`, every JSON line carrying `fields`. A second
/// call changes nothing.
pub fn init(format: LogFormat, default_filter: &str, fields: &[(&str, &str)]) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(JsonLine::new(fields))
            .try_init(),
    };
}

/// What a subscriber wrote, kept in memory: for tests of what is logged
/// (`tracing_subscriber::fmt().with_writer(capture.writer())`).
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    /// A writer for `with_writer`: every write lands in this capture.
    pub fn writer(&self) -> impl Fn() -> Capture + Send + Sync + 'static {
        let capture = self.clone();
        move || capture.clone()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The JSON event format with the process's fields added to each line.
struct JsonLine {
    inner: format::Format<format::Json>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl JsonLine {
    fn new(fields: &[(&str, &str)]) -> JsonLine {
        JsonLine {
            inner: format::format().json().flatten_event(true),
            fields: fields
                .iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| ((*name).to_string(), serde_json::Value::from(*value)))
                .collect(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    FormattedFields<N>: 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line.trim_end()) {
            Ok(mut object) => {
                for (name, value) in &self.fields {
                    object.entry(name.clone()).or_insert_with(|| value.clone());
                }
                writeln!(writer, "{}", serde_json::Value::Object(object))
            }
            // Not an object (it always is): the line as it came.
            Err(_) => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the format parses from its flag values and refuses others by
    // name. Method: each value, and a wrong one.
    #[test]
    fn the_format_parses_from_its_flag_values() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(LogFormat::Json.to_string(), "json");
        let wrong = "xml".parse::<LogFormat>().unwrap_err();
        assert!(wrong.contains("text, json"), "{wrong}");
    }

    // Goal: a JSON line carries the process's fields at the top level
    // beside the event's own, and an event's own field of the same name
    // wins. Method: a subscriber writing into a buffer, two events.
    #[test]
    fn a_json_line_carries_the_process_fields() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(JsonLine::new(&[
                ("cluster_id", "c1"),
                ("node_id", "s1"),
                ("empty", ""),
            ]))
            .with_writer(capture.writer())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(term = 3, "hello");
            tracing::info!(cluster_id = "c2", "other cluster");
        });
        let text = capture.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["cluster_id"], "c1");
        assert_eq!(lines[0]["node_id"], "s1");
        assert_eq!(lines[0]["term"], 3);
        assert_eq!(lines[0]["message"], "hello");
        assert!(lines[0].get("empty").is_none(), "empty fields are left out");
        assert_eq!(lines[1]["cluster_id"], "c2", "the event's own field wins");
    }
}
