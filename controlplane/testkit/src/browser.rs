//! Headless Chromium for the console's browser tests, driven over the
//! Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ended by NUL on file descriptors 3 and 4, which a shell maps
//! to the child's stdin and stdout; no port, no websocket, no extra
//! crate). One tab; navigation waits for the load event; the status of
//! the last document answer is kept.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest wait for one command's answer or one page load.
pub const BROWSER_WAIT: Duration = Duration::from_secs(30);
/// Largest message read from the browser (screenshots are the biggest).
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Tallest full-page screenshot, in CSS pixels.
const SCREENSHOT_HEIGHT_MAX: f64 = 6000.0;

/// The Chromium binary on this machine, if any (`RAP_CHROMIUM` first).
pub fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("RAP_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A headless Chromium with one tab; killed when dropped.
pub struct Browser {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
    buffer: Vec<u8>,
    next_id: u64,
    session: String,
    events: Vec<Value>,
    /// HTTP status of the last document loaded.
    pub status: u16,
    /// Where screenshots go.
    pub shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `binary` headless with a fresh profile (certificate errors
    /// ignored: the console's certificate is self-signed), one tab open;
    /// screenshots go to `shots`.
    pub async fn launch(binary: &Path, shots: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("browser profile dir");
        std::fs::create_dir_all(shots).expect("screenshot dir");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 >/dev/null")
            .arg(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--ignore-certificate-errors",
                "--window-size=1366,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().expect("stdin");
        let output = child.stdout.take().expect("stdout");
        let mut browser = Browser {
            child,
            input,
            output,
            buffer: Vec::new(),
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            status: 0,
            shots: shots.to_path_buf(),
            _profile: profile,
        };
        let target = browser
            .browser_call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = browser
            .browser_call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        browser.call("Page.enable", json!({})).await;
        browser.call("Network.enable", json!({})).await;
        browser
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> u64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if session {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.input
            .write_all(&bytes)
            .await
            .expect("write to chromium");
        self.input.flush().await.expect("flush to chromium");
        self.next_id
    }

    async fn read_message(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == 0) {
                let message: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&message[..message.len() - 1])
                    .expect("a JSON message from chromium");
            }
            assert!(self.buffer.len() < MESSAGE_BYTES_MAX, "message too large");
            let mut chunk = vec![0u8; 256 * 1024];
            let n = tokio::time::timeout(BROWSER_WAIT, self.output.read(&mut chunk))
                .await
                .expect("chromium did not answer in time")
                .expect("read from chromium");
            assert!(n > 0, "chromium closed its pipe");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn wait_answer(&mut self, id: u64) -> Value {
        loop {
            let message = self.read_message().await;
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("chromium refused: {error}");
                }
                return message["result"].clone();
            }
            self.note(message);
        }
    }

    fn note(&mut self, message: Value) {
        if message["method"] == "Network.responseReceived"
            && message["params"]["type"] == "Document"
        {
            self.status = message["params"]["response"]["status"]
                .as_u64()
                .unwrap_or(0) as u16;
        }
        if message.get("method").is_some() {
            self.events.push(message);
        }
    }

    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, false).await;
        self.wait_answer(id).await
    }

    /// Calls `method` in the tab; returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, true).await;
        self.wait_answer(id).await
    }

    async fn wait_load(&mut self) {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            if self
                .events
                .iter()
                .any(|e| e["method"] == "Page.loadEventFired")
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "page did not load");
            let message = self.read_message().await;
            self.note(message);
        }
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&mut self, url: &str) {
        self.events.clear();
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_load().await;
    }

    /// Evaluates `expression` in the page; returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Runs `script` (which navigates: a click, a submit) and waits for
    /// the next page to load.
    pub async fn navigate_by(&mut self, script: &str) {
        self.events.clear();
        self.eval(script).await;
        self.wait_load().await;
    }

    /// Sets the fields of the form that holds `button` (CSS selector),
    /// then clicks it and waits for the answer page.
    pub async fn submit(&mut self, button: &str, fields: &[(&str, &str)]) {
        let mut script = format!(
            "(() => {{ const b = document.querySelector({}); if (!b) throw new Error('no ' + {0}); const f = b.form;",
            serde_json::to_string(button).expect("json")
        );
        for (name, value) in fields {
            script.push_str(&format!(
                "f.elements[{}].value = {};",
                serde_json::to_string(name).expect("json"),
                serde_json::to_string(value).expect("json")
            ));
        }
        script.push_str("b.click(); return true; })()");
        self.navigate_by(&script).await;
    }

    /// The page's URL.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's visible text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The text of the first element matching `selector` (empty if none).
    pub async fn text_of(&mut self, selector: &str) -> String {
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.innerText : ''; }})()",
            serde_json::to_string(selector).expect("json")
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// A PNG of the whole page as `<shots>/<name>.png`.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let width = size["width"].as_f64().unwrap_or(1366.0).max(1.0);
        let height = size["height"]
            .as_f64()
            .unwrap_or(900.0)
            .clamp(1.0, SCREENSHOT_HEIGHT_MAX);
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 }
                }),
            )
            .await;
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().expect("screenshot data").as_bytes())
            .expect("base64 screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
