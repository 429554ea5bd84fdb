//! HTML of the console: escaping, the page frame, sortable tables, state
//! badges. Everything is rendered on the server in one answer: the style
//! sheet is inline and allowed by its hash in the Content-Security-Policy
//! ([`style_hash`]); no script runs, and sorting is a link.

use crate::auth::{Kind, Principal};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The console's only style sheet, inline in every page.
pub const STYLE: &str = "
:root{--fg:#1c2430;--muted:#5b6675;--line:#d9dee5;--bg:#f6f7f9;--accent:#1f5fbf}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:center;gap:1rem;padding:.6rem 1.2rem;background:#15202e;color:#fff}
header .brand{font-weight:600;letter-spacing:.02em}
header .who{margin-left:auto;font-size:13px;color:#c9d3df}
header form{display:inline}
header button{background:transparent;border:1px solid #5a6b80;color:#fff;border-radius:4px;padding:.15rem .6rem;cursor:pointer}
nav{display:flex;flex-wrap:wrap;gap:.2rem;padding:.4rem 1.2rem;background:#fff;border-bottom:1px solid var(--line)}
nav a{padding:.3rem .6rem;border-radius:4px;color:var(--fg);text-decoration:none}
nav a.here{background:#e7eefb;color:var(--accent);font-weight:600}
main{padding:1rem 1.2rem 3rem;max-width:1400px}
h1{font-size:20px;margin:.2rem 0 1rem}
h2{font-size:16px;margin:1.4rem 0 .5rem}
a{color:var(--accent)}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);margin-bottom:.6rem}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th a{color:var(--fg);text-decoration:none}
th a.sorted{color:var(--accent)}
tr:nth-child(even) td{background:#fbfcfd}
.muted{color:var(--muted)}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.state{display:inline-block;padding:.05rem .5rem;border-radius:10px;font-size:12.5px;font-weight:600;border:1px solid transparent}
.ok{background:#e3f5e8;color:#17652f;border-color:#b8e2c4}
.warn{background:#fff4d6;color:#7a5400;border-color:#f0d68a}
.bad{background:#fde6e6;color:#9b1c1c;border-color:#f3b9b9}
.off{background:#eceff3;color:#4a5563;border-color:#d3d9e0}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin-bottom:1rem}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.7rem 1rem;min-width:11rem}
.card .n{font-size:22px;font-weight:600}
.notice{background:#e7eefb;border:1px solid #bcd0f2;padding:.6rem .8rem;border-radius:6px;margin-bottom:1rem}
.error{background:#fde6e6;border:1px solid #f3b9b9;padding:.6rem .8rem;border-radius:6px;margin-bottom:1rem}
form.inline{display:inline-flex;gap:.3rem;align-items:center;margin:0}
input,select{font:inherit;padding:.25rem .4rem;border:1px solid #b9c2cd;border-radius:4px}
button{font:inherit;padding:.25rem .8rem;border-radius:4px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}
button.secondary{background:#fff;color:var(--accent)}
button.danger{background:#b42318;border-color:#b42318}
.signin{max-width:26rem;margin:4rem auto;background:#fff;border:1px solid var(--line);border-radius:8px;padding:1.5rem}
.signin input{width:100%;margin:.3rem 0 .8rem}
.pager{margin:.4rem 0 1rem}
.qr{width:220px;height:220px;background:#fff}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;background:#fff;border:1px solid var(--line);padding:.7rem 1rem;border-radius:6px}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0}
";

/// `'sha256-…'` of [`STYLE`], for the Content-Security-Policy.
pub fn style_hash() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
    format!("'sha256-{}'", data_encoding::BASE64.encode(digest.as_ref()))
}

/// `text` with the five HTML-special characters escaped (safe in text
/// and in double-quoted attributes).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` percent-encoded for a query string.
pub fn url(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A query string from pairs (empty values left out), with its `?`.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", url(k), url(v)))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

/// A unix-ms instant as RFC 3339 UTC (`-` for 0).
pub fn time(unix_ms: i64) -> String {
    rap_proto::time::rfc3339_utc(unix_ms)
}

/// How long ago `unix_ms` was, in words (`never` for 0).
pub fn ago(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms == 0 {
        return "never".into();
    }
    let s = (now_ms - unix_ms) / 1000;
    match s {
        s if s < 0 => format!("in {}", span(-s)),
        s => format!("{} ago", span(s)),
    }
}

/// A duration in seconds as its largest unit (`42 s`, `5 min`, `3 h`,
/// `2 d`).
pub fn span(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// The colour class of a state word: green for good, amber for
/// attention, red for trouble, grey for none.
pub fn state_class(state: &str) -> &'static str {
    match state {
        "healthy" | "active" | "approved" | "ok" | "serving" | "enabled" | "running" | "valid"
        | "leader" | "majority" | "yes" => "ok",
        "degraded" | "pending" | "expiring" | "stale" | "minority" | "unknown" | "never seen"
        | "partial" => "warn",
        "fenced" | "unhealthy" | "revoked" | "rejected" | "expired" | "refused" | "failed"
        | "unreadable" | "down" | "disabled" | "error" => "bad",
        _ => "off",
    }
}

/// A state in words and colour.
pub fn badge(state: &str) -> String {
    let shown = if state.is_empty() { "-" } else { state };
    format!(
        "<span class=\"state {}\">{}</span>",
        state_class(shown),
        esc(shown)
    )
}

/// A table cell: its HTML and the key it sorts by.
#[derive(Clone, Debug)]
pub struct Cell {
    html: String,
    key: String,
}

impl Cell {
    /// Text, escaped; sorts by itself.
    pub fn text(text: &str) -> Cell {
        Cell {
            html: if text.is_empty() {
                "-".into()
            } else {
                esc(text)
            },
            key: text.to_string(),
        }
    }

    /// Monospace text (ids, serials, fingerprints).
    pub fn mono(text: &str) -> Cell {
        Cell {
            html: format!("<span class=\"mono\">{}</span>", esc(text)),
            key: text.to_string(),
        }
    }

    /// A number; sorts numerically.
    pub fn num(n: i64) -> Cell {
        Cell {
            html: n.to_string(),
            key: format!("{:020}", n.saturating_add(i64::MAX / 2)),
        }
    }

    /// A state badge; sorts by the word.
    pub fn state(state: &str) -> Cell {
        Cell {
            html: badge(state),
            key: state.to_string(),
        }
    }

    /// An instant (unix ms) with how long ago; sorts by time.
    pub fn when(unix_ms: i64, now_ms: i64) -> Cell {
        Cell {
            html: format!(
                "<span title=\"{}\">{}</span>",
                time(unix_ms),
                esc(&ago(unix_ms, now_ms))
            ),
            key: format!("{:020}", unix_ms.saturating_add(i64::MAX / 2)),
        }
    }

    /// A link to `href` showing `text`; sorts by the text.
    pub fn link(href: &str, text: &str) -> Cell {
        Cell {
            html: format!("<a href=\"{}\">{}</a>", esc(href), esc(text)),
            key: text.to_string(),
        }
    }

    /// Raw HTML the caller built from escaped parts, sorted by `key`.
    pub fn html(html: String, key: &str) -> Cell {
        Cell {
            html,
            key: key.to_string(),
        }
    }
}

/// A table whose column headers sort it (server side: `?sort=<col>&dir=`).
#[derive(Debug)]
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells in column order).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table sorted as `params` ask (`sort` = column index, `dir` =
    /// `asc`/`desc`; headers link to the other order), `empty` when it
    /// has no rows. `path` and the other `params` make the header links.
    pub fn render(mut self, path: &str, params: &BTreeMap<String, String>, empty: &str) -> String {
        if self.rows.is_empty() {
            return format!("<p class=\"muted\">{}</p>", esc(empty));
        }
        let sort = params
            .get("sort")
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|c| *c < self.columns.len());
        let desc = params.get("dir").is_some_and(|d| d == "desc");
        if let Some(col) = sort {
            self.rows.sort_by(|a, b| {
                let order = match (a.get(col), b.get(col)) {
                    (Some(a), Some(b)) => a.key.cmp(&b.key),
                    _ => Ordering::Equal,
                };
                if desc { order.reverse() } else { order }
            });
        }
        let mut out = String::from("<table><thead><tr>");
        for (i, title) in self.columns.iter().enumerate() {
            let here = sort == Some(i);
            let next_dir = if here && !desc { "desc" } else { "asc" };
            let mut pairs: Vec<(&str, &str)> = params
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "sort" | "dir" | "done" | "target"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let col = i.to_string();
            pairs.push(("sort", &col));
            pairs.push(("dir", next_dir));
            let arrow = match (here, desc) {
                (true, false) => " ▲",
                (true, true) => " ▼",
                _ => "",
            };
            let _ = write!(
                out,
                "<th><a class=\"{}\" href=\"{}{}\">{}{}</a></th>",
                if here { "sorted" } else { "" },
                esc(path),
                esc(&query(&pairs)),
                esc(title),
                arrow
            );
        }
        out.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                let _ = write!(out, "<td>{}</td>", cell.html);
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        out
    }
}

/// A hidden CSRF field for a form of the session.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A link to the audit rows matching these filters.
pub fn audit_link(filters: &[(&str, &str)], text: &str) -> String {
    format!(
        "<a href=\"/audit{}\">{}</a>",
        esc(&query(filters)),
        esc(text)
    )
}

/// What a page shows around its body.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The signed-in principal (none on the sign-in page).
    pub principal: Option<&'a Principal>,
    /// The path of the page (its nav entry is marked).
    pub path: &'a str,
    /// The page's title.
    pub title: &'a str,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: &'a str,
}

/// The whole document: head with the inline style, the header with the
/// principal and sign-out, the navigation of the pages it may see, and
/// `body`.
pub fn document(frame: &Frame<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + STYLE.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · rap console</title><style>{}</style></head><body>",
        esc(frame.title),
        STYLE
    );
    out.push_str("<header><span class=\"brand\">rap console</span>");
    if let Some(p) = frame.principal {
        let kind = match &p.kind {
            Kind::OrgAdmin(org) => format!("org-admin of {org}"),
            other => other.name().to_string(),
        };
        let step = match (p.totp_enrolled, p.stepped_up) {
            (true, true) => " · stepped up",
            (true, false) => " · TOTP",
            _ => "",
        };
        let _ = write!(
            out,
            "<span class=\"who\">{} ({}){} · <a href=\"/account\" class=\"who\">account</a></span>\
             <form method=\"post\" action=\"/signout\">{}<button type=\"submit\">Sign out</button></form>",
            esc(&p.id),
            esc(&kind),
            step,
            csrf_field(frame.csrf)
        );
    }
    out.push_str("</header>");
    if let Some(p) = frame.principal {
        out.push_str("<nav>");
        for route in super::ROUTES.iter().filter(|r| r.nav && r.access.admits(p)) {
            let _ = write!(
                out,
                "<a href=\"{}\"{}>{}</a>",
                route.path,
                if route.path == frame.path {
                    " class=\"here\""
                } else {
                    ""
                },
                esc(route.title)
            );
        }
        out.push_str("</nav>");
    }
    let _ = write!(
        out,
        "<main><h1>{}</h1>{}</main></body></html>",
        esc(frame.title),
        body
    );
    out
}

/// An SVG of the QR code of `text` (dark modules as one path), or `None`
/// when it does not fit a QR code.
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let width = code.width();
    let quiet = 4;
    let size = width + 2 * quiet;
    let mut path = String::new();
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (x, y) = (i % width + quiet, i / width + quiet);
            let _ = write!(path, "M{x} {y}h1v1h-1z");
        }
    }
    Some(format!(
        "<svg class=\"qr\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" \
         shape-rendering=\"crispEdges\" role=\"img\" aria-label=\"QR code\">\
         <rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: nothing a caller typed can open a tag or leave an attribute.
    // Method: escape every special character.
    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    // Goal: a header link sorts by its column and flips the order; a
    // numeric column sorts as numbers. Method: render twice.
    #[test]
    fn tables_sort_by_the_chosen_column() {
        let mut t = Table::new(&["name", "n"]);
        for (name, n) in [("b", 10), ("a", 9), ("c", 100)] {
            t.row(vec![Cell::text(name), Cell::num(n)]);
        }
        let mut params = BTreeMap::new();
        params.insert("sort".to_string(), "1".to_string());
        params.insert("dir".to_string(), "desc".to_string());
        let html = t.render("/x", &params, "none");
        let (c, b, a) = (
            html.find("<td>c</td>").expect("c"),
            html.find("<td>b</td>").expect("b"),
            html.find("<td>a</td>").expect("a"),
        );
        assert!(c < b && b < a, "{html}");
        assert!(html.contains("href=\"/x?sort=1&amp;dir=asc\""), "{html}");
    }

    // Goal: the CSP hash is of the very style sheet served. Method:
    // recompute it.
    #[test]
    fn style_hash_is_of_the_inline_style() {
        let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        assert!(style_hash().contains(&data_encoding::BASE64.encode(digest.as_ref())));
    }
}
