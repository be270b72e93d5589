//! A headless Chromium driven over WebDriver (W3C, JSON over HTTP to `chromedriver`), for the
//! tests that must see the console as a person's browser does: blocking, one request per
//! connection, only the commands those tests use.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key W3C WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// WebDriver's key codes.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

impl Browser {
    /// Starts `chromedriver` and a headless Chromium that accepts the cluster's own CA.
    /// `None` (with the reason) when either is not installed.
    pub fn start(port: u16) -> Result<Browser, String> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("chromium is not installed (apt-get install chromium chromium-driver)")?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("chromedriver does not start ({e}); apt-get install chromium-driver")
            })?;
        let mut browser = Browser { driver, port, session: String::new() };
        let until = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).map(|v| v["ready"] == true) != Ok(true) {
            assert!(Instant::now() < until, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let session = browser.call("POST", "/session", Some(capabilities)).expect("a session");
        browser.session = session["sessionId"].as_str().expect("a session id").to_owned();
        Ok(browser)
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "url", json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.command("GET", "url", Value::Null).as_str().unwrap_or_default().to_owned()
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.command("POST", &format!("element/{element}/value"), json!({ "text": text }));
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.command("POST", &format!("element/{element}/click"), json!({}));
    }

    /// Presses `key` (a WebDriver key code, e.g. `TAB`) on the element that has the focus.
    pub fn press(&self, key: &str) {
        let active = self.command("GET", "element/active", Value::Null);
        let element = active[ELEMENT].as_str().expect("a focused element").to_owned();
        self.command("POST", &format!("element/{element}/value"), json!({ "text": key }));
    }

    /// Whether the focused element matches `css`.
    pub fn focused(&self, css: &str) -> bool {
        let script =
            "return !!document.activeElement && document.activeElement.matches(arguments[0]);";
        let matched =
            self.command("POST", "execute/sync", json!({ "script": script, "args": [css] }));
        matched.as_bool().unwrap_or(false)
    }

    /// The text of the element `css` selects, as the page shows it now ("" if none).
    pub fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
        let text = self.command("POST", "execute/sync", json!({ "script": script, "args": [css] }));
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `check` holds of the page's text in `css`; returns that text.
    pub fn wait_text(&self, css: &str, within: Duration, check: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        loop {
            let text = self.text(css);
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < until, "the page never showed it; it shows: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG");
        std::fs::write(path, png).expect("screenshot saved");
    }

    fn find(&self, css: &str) -> String {
        let found =
            self.command("POST", "element", json!({ "using": "css selector", "value": css }));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}")).to_owned()
    }

    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}/{path}", self.session);
        let body = (!body.is_null()).then_some(body);
        self.call(method, &path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One WebDriver call: its `value`, or the error it names.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open: read the head, then the body it announces.
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let (head_len, length) = loop {
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("chromedriver closed the connection".into());
            }
            response.extend_from_slice(&buf[..n]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|l| l.trim().parse::<usize>().ok())
                .ok_or("chromedriver sent no Content-Length")?;
            break (end + 4, length);
        };
        while response.len() < head_len + length {
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("chromedriver closed the connection mid-answer".into());
            }
            response.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&response[head_len..head_len + length]).into_owned();
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let value = value["value"].clone();
        match value.get("error") {
            Some(error) => Err(format!("{error}: {}", value["message"])),
            None => Ok(value),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
