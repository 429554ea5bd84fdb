//! The timeline picture of a run (SVG): one row per client process,
//! operations by outcome over time (green ok, amber refused, red
//! unknown), the nemesis's fault windows shaded (labelled where there is
//! room; every window has its kind and detail as a tooltip). Each row is
//! drawn per pixel column in the colour of most of its operations (the
//! worse outcome on a tie), so a long run stays readable and small.

use crate::history::{Fault, Op};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Width of the time axis in pixels.
pub const WIDTH_PX: u64 = 1200;
const LEFT: u64 = 90;
const ROW: u64 = 22;
const TOP: u64 = 30;
/// Narrowest fault window that gets a label, in pixels.
const LABEL_MIN_PX: u64 = 40;
/// Most time-axis ticks.
const TICKS_MAX: u64 = 12;

fn colour(rank: u8) -> &'static str {
    match rank {
        3 => "#c0392b",
        2 => "#e0a100",
        _ => "#2e9e5b",
    }
}

/// The SVG of `history` and `faults` over `duration_ms`.
pub fn svg(history: &[Op], faults: &[Fault], duration_ms: u64) -> String {
    let duration = duration_ms.max(1);
    let x = |ms: u64| LEFT + ms.min(duration) * WIDTH_PX / duration;
    // Per row and pixel column: operations ok, refused, unknown.
    let mut counts: BTreeMap<&str, BTreeMap<u64, [u64; 3]>> = BTreeMap::new();
    for op in history {
        let slot = match op.outcome.kind() {
            "ok" => 0,
            "refused" => 1,
            _ => 2,
        };
        let row = counts.entry(op.process.as_str()).or_default();
        for px in x(op.invoke_ms)..=x(op.complete_ms) {
            row.entry(px).or_default()[slot] += 1;
        }
    }
    let rows: BTreeMap<&str, BTreeMap<u64, u8>> = counts
        .into_iter()
        .map(|(process, cells)| {
            let ranked = cells
                .into_iter()
                .map(|(px, [ok, refused, unknown])| {
                    let rank = if unknown >= refused && unknown >= ok {
                        3
                    } else if refused >= ok {
                        2
                    } else {
                        1
                    };
                    (px, rank)
                })
                .collect();
            (process, ranked)
        })
        .collect();
    let fault_rows = 1;
    let height = TOP + (rows.len() as u64 + fault_rows) * ROW + 40;
    let width = LEFT + WIDTH_PX + 20;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\">operations by outcome over {:.1} s \
         (green ok, amber refused, red unknown); shaded: faults</text>",
        duration as f64 / 1000.0
    );
    let bottom = TOP + (rows.len() as u64 + fault_rows) * ROW;
    for (i, fault) in faults.iter().enumerate() {
        let (a, b) = (
            x(fault.start_ms),
            x(fault.end_ms).max(x(fault.start_ms) + 1),
        );
        let _ = write!(
            out,
            "<rect x=\"{a}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"#5b6b8c\" \
             fill-opacity=\"0.15\"><title>{}: {}</title></rect>",
            b - a,
            bottom - TOP,
            escape(&fault.kind),
            escape(&fault.detail),
        );
        if b - a >= LABEL_MIN_PX {
            let _ = write!(
                out,
                "<text x=\"{a}\" y=\"{}\" fill=\"#3b4a6b\">{}</text>",
                TOP + ROW - 8 + (i as u64 % 2) * 10,
                escape(&fault.kind)
            );
        }
    }
    for (i, (process, cells)) in rows.iter().enumerate() {
        let y = TOP + (i as u64 + fault_rows) * ROW;
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{}\">{}</text>",
            y + ROW / 2 + 4,
            escape(process)
        );
        let mut run: Option<(u64, u64, u8)> = None;
        let flush = |out: &mut String, run: Option<(u64, u64, u8)>| {
            if let Some((start, end, rank)) = run {
                let _ = write!(
                    out,
                    "<rect x=\"{start}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>",
                    y + 3,
                    end - start + 1,
                    ROW - 6,
                    colour(rank)
                );
            }
        };
        for (&px, &rank) in cells {
            run = match run {
                Some((start, end, r)) if r == rank && px == end + 1 => Some((start, px, r)),
                other => {
                    flush(&mut out, other);
                    Some((px, px, rank))
                }
            };
        }
        flush(&mut out, run);
    }
    let seconds = duration / 1000;
    let step = [10u64, 30, 60, 120, 300, 600, 1800, 3600]
        .into_iter()
        .find(|step| seconds / step <= TICKS_MAX)
        .unwrap_or(3600);
    for second in (0..=seconds).step_by(step as usize) {
        let px = x(second * 1000);
        let _ = write!(
            out,
            "<line x1=\"{px}\" y1=\"{bottom}\" x2=\"{px}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{px}\" y=\"{}\" fill=\"#555\">{second}s</text>",
            bottom + 5,
            bottom + 18
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    // Goal: the picture has a row per process, a shaded window per fault
    // and colours by outcome, and stays bounded for many operations.
    // Method: 100,000 operations of two processes and one fault.
    #[test]
    fn the_timeline_draws_rows_faults_and_outcomes_in_bounded_size() {
        let mut history = Vec::new();
        for i in 0..100_000u64 {
            history.push(Op {
                process: format!("client-{}", i % 2),
                kind: "fence".into(),
                node: "s1".into(),
                invoke_ms: i,
                complete_ms: i + 1,
                outcome: if (40_000..41_000).contains(&i) {
                    Outcome::Unknown {
                        reason: "timeout".into(),
                    }
                } else {
                    Outcome::Ok { term: 1, seq: i }
                },
                detail: crate::history::Detail::None,
            });
        }
        let faults = vec![Fault {
            kind: "partition".into(),
            detail: "{s1} | {s2,s3}".into(),
            start_ms: 39_000,
            end_ms: 45_000,
        }];
        let svg = svg(&history, &faults, 100_001);
        assert!(svg.contains("client-0") && svg.contains("client-1"));
        assert!(svg.contains("partition: {s1} | {s2,s3}"));
        assert!(svg.contains("#c0392b") && svg.contains("#2e9e5b"));
        assert!(svg.len() < 200_000, "{} bytes", svg.len());
    }
}
