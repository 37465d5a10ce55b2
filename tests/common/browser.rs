//! A real browser for the console's tests: Debian's chromium, headless, driven through its
//! WebDriver (`chromium-driver`) with fantoccini. Without the packages the tests report
//! themselves skipped, unless `KEYGATE_TEST_REQUIRE_BROWSER` is set (CI sets it), when they
//! fail.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// True when chromium and its driver are installed; otherwise says the test is skipped (or
/// fails, when CI requires the browser).
pub fn browser_installed() -> bool {
    let found = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !found {
        if std::env::var_os("KEYGATE_TEST_REQUIRE_BROWSER").is_some() {
            panic!(
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            );
        }
        eprintln!("skipped: chromium is not installed (apt-get install chromium chromium-driver)");
    }
    found
}

/// chromedriver and one headless chromium session. Both end when this is dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    driver_url: String,
    session: String,
    /// Where the screenshots go: the test's output directory.
    shots: PathBuf,
    _profile: TempDir,
}

impl Browser {
    /// A fresh browser (its own profile: no cookies) whose screenshots go under `name`.
    pub async fn start(name: &str) -> Browser {
        let (driver, port) = start_driver();
        let driver_url = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        caps.insert(
            "goog:loggingPrefs".into(),
            serde_json::json!({"browser": "ALL"}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver_url)
            .await
            .unwrap_or_else(|e| panic!("chromium did not start: {e}"));
        let session = client
            .session_id()
            .await
            .unwrap()
            .expect("a WebDriver session");
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("console-screenshots")
            .join(name);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            driver_url,
            session,
            shots,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element `css`, once it is on the page and shown (within 20 s: chromium is slow on a
    /// busy 2-core machine).
    pub async fn shown(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if e.is_displayed().await.unwrap_or(false) {
                    return e;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{css} is not shown; the page says: {}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the text of `css` contains `wanted`, and returns it.
    pub async fn text_with(&self, css: &str, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never said {wanted:?}: it says {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of `css`, or "" when it is not there.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Types `text` into the field `css`, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.shown(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.shown(css).await.click().await.unwrap();
    }

    /// Accepts the confirmation dialog the last click opened.
    pub async fn confirm(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.client.accept_alert().await.is_err() {
            assert!(Instant::now() < deadline, "no confirmation was asked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a screenshot of the page as `<name>.png` in the test's output directory.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// What the page wrote to the browser's console since the last call, as (level, text).
    pub async fn console(&self) -> Vec<(String, String)> {
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!(
                "{}/session/{}/se/log",
                self.driver_url, self.session
            ))
            .json(&serde_json::json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["value"]
            .as_array()
            .unwrap_or_else(|| panic!("no browser log: {answer}"))
            .iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Fails when the page logged an error or a warning (a refused script or style, a failed
    /// call the console did not expect) since the last call.
    pub async fn assert_quiet_console(&self, page: &str) {
        let noisy: Vec<_> = self
            .console()
            .await
            .into_iter()
            .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
            .collect();
        assert!(noisy.is_empty(), "the console on {page}: {noisy:?}");
    }

    /// Runs `script` (an async function body that ends by calling its last argument) in the
    /// page and returns what it passed.
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client.execute_async(script, vec![]).await.unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromedriver then quits its chromium), then stops the driver and
        // anything left of its process group: a killed driver leaves its browsers running,
        // and each holds inotify instances the other tests' keygates need.
        end_session(&self.driver_url, &self.session);
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` on the driver, blocking (a `Drop` cannot wait for a future).
fn end_session(driver_url: &str, session: &str) {
    use std::io::{Read, Write};
    let Some(addr) = driver_url.strip_prefix("http://") else {
        return;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

/// chromedriver on a free loopback port, once it answers.
fn start_driver() -> (Child, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, with the browsers it starts: stopped as one.
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = driver.try_wait().unwrap() {
                eprintln!("chromedriver exited ({status}) on port {port}; trying another");
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (driver, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = driver.kill();
        let _ = driver.wait();
    }
    panic!("chromedriver did not start");
}
