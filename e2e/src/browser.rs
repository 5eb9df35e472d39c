//! A real browser against a page served on loopback: Debian's `chromium` (`apt-get install
//! chromium`), headless, driven only through its command-line modes (no DevTools protocol).
//!
//! [`visit`] loads a page, lets its scripts run, and returns the DOM they left and every URL the
//! page asked for (from chromium's NetLog); [`requests_outside`] picks the ones that left the
//! page's origin. A screenshot is a second launch of the same page.
//!
//! # What chromium does here
//! - `--virtual-time-budget=<ms>` runs the page on virtual time: timers (`setInterval`) fire as
//!   fast as the page can go, but virtual time *pauses while a network fetch is pending*, so real
//!   loopback `fetch`es complete and the page sees their answers (a 200 ms poll makes about
//!   `ms / 200` round trips, in well under `ms` of real time). The flip side: a request that is
//!   never answered (a long poll) stalls virtual time, and the launch only ends at its timeout;
//!   `--timeout=` does not cut that stall short, and without a budget `--dump-dom` dumps as soon
//!   as the page has loaded, before any timer fires.
//! - Every launch is kept off the network: besides the `--disable-*` flags, chromium's own
//!   background requests (time sync, Gaia `ListAccounts`, the update service) still start, so
//!   `--host-resolver-rules` makes every host but loopback and the visited URL's host fail to
//!   resolve (IP literals included: `http://192.0.2.1/` fails at once with
//!   `ERR_NAME_NOT_RESOLVED`, nothing is dialled).
//! - Debian's `/usr/bin/chromium` is a shell wrapper that sources `/etc/chromium.d` (Google API
//!   keys, `--enable-remote-extensions`, which drops `--disable-background-networking`), so
//!   [`chromium`] returns the binary behind it when there is one.
//! - A page that fails to load still exits 0; [`visit`] turns chromium's `Page load failed`
//!   line into an error.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// How long a launch may take beyond the page's `wait_ms`.
pub const LAUNCH_SLACK: Duration = Duration::from_secs(30);

/// Finds the chromium binary: `chromium`, then `chromium-browser`, on `PATH`; when that is a
/// shell wrapper (Debian's), the real binary behind it (`<prefix>/lib/chromium/chromium`).
///
/// # Errors
/// When neither is installed; the message names the package.
pub fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let exe = dir.join(name);
            if !is_executable(&exe) {
                continue;
            }
            if is_script(&exe)
                && let Some(real) = behind_wrapper(&dir, name)
            {
                return Ok(real);
            }
            return Ok(exe);
        }
    }
    bail!(
        "chromium is not installed (no `chromium` or `chromium-browser` on PATH): apt-get install chromium"
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_script(p: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"#!"
}

/// The binary a `<prefix>/bin/<name>` wrapper starts: `<prefix>/lib/<name>/<name>`.
fn behind_wrapper(bin_dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = bin_dir.parent()?;
    [
        prefix.join("lib").join(name).join(name),
        prefix.join("lib/chromium/chromium"),
    ]
    .into_iter()
    .find(|p| is_executable(p) && !is_script(p))
}

/// What a page did in [`visit`].
#[derive(Debug, Clone)]
pub struct Visit {
    /// The serialized DOM after the page's scripts ran (`--dump-dom`).
    pub dom: String,
    /// Every URL the page requested, in order, one entry per request (the navigation itself,
    /// subresources, `fetch`es, the favicon); `data:` and `chrome:` URLs left out.
    pub requests: Vec<String>,
    /// The requests chromium made on its own behalf (no initiating origin and not the
    /// navigation: update checks, time sync), none of which could leave the machine.
    pub background: Vec<String>,
}

/// Loads `url` in headless chromium, lets its scripts run for `wait_ms` of virtual time (see the
/// module docs), and returns the DOM and the requests; with `screenshot`, also writes a PNG of
/// the same page there (1400×2000, a second launch).
///
/// # Errors
/// When chromium is missing, a launch exceeds `wait_ms` + [`LAUNCH_SLACK`] (its processes are
/// killed), exits non-zero (with its stderr), the page fails to load, or no screenshot appears.
pub fn visit(url: &str, wait_ms: u64, screenshot: Option<&Path>) -> Result<Visit> {
    visit_within(
        url,
        wait_ms,
        screenshot,
        Duration::from_millis(wait_ms) + LAUNCH_SLACK,
    )
}

/// [`visit`] with each launch bounded by `timeout` instead.
///
/// # Errors
/// As [`visit`].
pub fn visit_within(
    url: &str,
    wait_ms: u64,
    screenshot: Option<&Path>,
    timeout: Duration,
) -> Result<Visit> {
    let exe = chromium()?;
    let scratch = tempfile::tempdir().context("temporary folder for the net log")?;
    let netlog = scratch.path().join("netlog.json");
    let out = launch(
        &exe,
        url,
        wait_ms,
        &[
            format!("--log-net-log={}", netlog.display()),
            "--dump-dom".into(),
        ],
        timeout,
    )?;
    let log = std::fs::read_to_string(&netlog)
        .with_context(|| format!("chromium wrote no net log for {url}"))?;
    let (requests, background) = netlog_requests(&log);
    if let Some(png) = screenshot {
        let _ = std::fs::remove_file(png);
        launch(
            &exe,
            url,
            wait_ms,
            &[
                format!("--screenshot={}", png.display()),
                "--window-size=1400,2000".into(),
            ],
            timeout,
        )?;
        if !png.is_file() {
            bail!("chromium wrote no screenshot of {url} to {}", png.display());
        }
    }
    Ok(Visit {
        dom: out,
        requests,
        background,
    })
}

/// A launch's process group, killed (once) by [`Group::kill`] or on drop.
struct Group(Child, bool);

impl Group {
    fn kill(&mut self) {
        if std::mem::replace(&mut self.1, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Also reaps helpers (zygote, renderers) that outlive a normal exit.
        self.kill();
    }
}

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    })
}

/// The last lines of chromium's stderr, without its D-Bus noise.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains(":ERROR:dbus/"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One headless launch of `url` with the common flags and `extra`; returns stdout.
fn launch(
    exe: &Path,
    url: &str,
    wait_ms: u64,
    extra: &[String],
    timeout: Duration,
) -> Result<String> {
    let profile = tempfile::tempdir().context("temporary chromium profile")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-features=NetworkTimeServiceQuerying",
    ])
    .arg(host_rules(url))
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={wait_ms}"))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let mut group = Group(child, false);
    let out = reader(group.0.stdout.take().expect("piped"));
    let err = reader(group.0.stderr.take().expect("piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = group.0.try_wait().context("waiting for chromium")? {
            break s;
        }
        if Instant::now() > deadline {
            group.kill();
            let err = err.join().unwrap_or_default();
            bail!(
                "chromium did not finish {url} within {timeout:?} (killed)\n{}",
                tail(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The helpers hold the pipes open: kill them before reading to the end.
    group.kill();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("chromium exited with {status} on {url}\n{}", tail(&err));
    }
    if let Some(line) = err.lines().find(|l| l.contains("Page load failed")) {
        bail!("chromium could not load {url}: {line}");
    }
    Ok(out)
}

/// `--host-resolver-rules` that let only loopback and `url`'s own host resolve.
fn host_rules(url: &str) -> String {
    let mut rules =
        "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE ::1".to_string();
    if let Some((_, host, _)) = origin(url) {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.is_empty() && !host.contains([',', ' ']) {
            rules.push_str(&format!(", EXCLUDE {host}"));
        }
    }
    format!("--host-resolver-rules={rules}")
}

/// Splits chromium's NetLog (`--log-net-log`) into the page's requests and chromium's own (see
/// [`Visit`]): the URLs of its `URL_REQUEST_START_JOB` events (one per request and per redirect
/// leg). The file is read line by line (chromium writes the constants on the first line, then
/// one event per line followed by a comma), so a log cut short by a kill, with a trailing comma
/// and no closing `]}`, reads as far as it goes.
pub fn netlog_requests(log: &str) -> (Vec<String>, Vec<String>) {
    let mut start_job = None;
    let mut events = Vec::new();
    for line in log.lines() {
        let line = line.trim().trim_end_matches(',');
        if line.starts_with("{\"constants\"") {
            if let Ok(v) = serde_json::from_str::<Value>(&format!("{line}}}")) {
                start_job = v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64();
            }
        } else if line.starts_with('{')
            && let Ok(v) = serde_json::from_str::<Value>(line)
        {
            events.push(v);
        }
    }
    if events.is_empty()
        && let Ok(v) = serde_json::from_str::<Value>(log)
    {
        // Not one event per line: the whole document, if it parses.
        start_job = v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64();
        events = v["events"].as_array().cloned().unwrap_or_default();
    }
    let mut page = Vec::new();
    let mut background = Vec::new();
    for e in &events {
        let p = &e["params"];
        let Some(url) = p["url"].as_str() else {
            continue;
        };
        // Without the constants, the start-job events are the ones that carry an initiator.
        let is_start = match start_job {
            Some(t) => e["type"].as_u64() == Some(t),
            None => p.get("initiator").is_some(),
        };
        if !is_start || url.starts_with("data:") || url.starts_with("chrome:") {
            continue;
        }
        let own = p["initiator"].as_str() == Some("not an origin")
            && p["request_type"].as_str() != Some("main frame");
        if own { &mut background } else { &mut page }.push(url.to_string());
    }
    (page, background)
}

/// `(scheme, host, port)` of a URL with an authority; the port defaults by scheme.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            (&authority[..i], Some(authority[i + 1..].parse().ok()?))
        }
        _ => (authority, None),
    };
    let port = match (port, scheme.as_str()) {
        (Some(p), _) => p,
        (None, "http" | "ws") => 80,
        (None, "https" | "wss") => 443,
        (None, "ftp") => 21,
        (None, _) => 0,
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// The URLs in `requests` whose scheme://host:port differs from `origin` (e.g.
/// `"http://127.0.0.1:34567"`); a URL without a host (`blob:`, `file:`) counts as outside.
pub fn requests_outside(requests: &[String], origin: &str) -> Vec<String> {
    let want = self::origin(origin);
    requests
        .iter()
        .filter(|u| want.is_none() || self::origin(u) != want)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const POLL: &str = r#"<!doctype html><html><body><span id="n">0</span><script>
setInterval(() => fetch('/n').then(r => r.text()).then(t => {
  document.getElementById('n').textContent = t;
}), 200);
</script></body></html>"#;

    const EXTERNAL: &str = r#"<!doctype html><html><body><p id="p">external</p>
<img src="http://192.0.2.1/x.png"></body></html>"#;

    const HANG: &str = r#"<!doctype html><html><body><script>fetch('/never');</script>
</body></html>"#;

    /// A tiny HTTP server on loopback: `/` polls `/n`, `/n` counts, `/ext` points at TEST-NET,
    /// `/hang` fetches `/never`, which is never answered. Returns its origin.
    fn serve() -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let origin = format!("http://{}", l.local_addr().expect("addr"));
        let n = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let n = n.clone();
                std::thread::spawn(move || answer(s, &n));
            }
        });
        origin
    }

    fn answer(mut s: TcpStream, n: &AtomicU64) {
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut first = String::new();
        if r.read_line(&mut first).is_err() {
            return;
        }
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|k| k > 0) && line.trim() != "" {
            line.clear();
        }
        let path = first.split(' ').nth(1).unwrap_or("/");
        let (kind, body) = match path {
            "/" => ("text/html", POLL.to_string()),
            "/ext" => ("text/html", EXTERNAL.to_string()),
            "/hang" => ("text/html", HANG.to_string()),
            "/n" => (
                "text/plain",
                (n.fetch_add(1, Ordering::SeqCst) + 1).to_string(),
            ),
            "/never" => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            _ => {
                let _ = write!(
                    s,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                return;
            }
        };
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    /// Whether to run: chromium is there, or (without `ELF_REQUIRE_CHROMIUM`) skip.
    fn have_chromium() -> bool {
        match chromium() {
            Ok(_) => true,
            Err(e) if std::env::var_os("ELF_REQUIRE_CHROMIUM").is_some() => {
                panic!("ELF_REQUIRE_CHROMIUM is set: {e:#}")
            }
            Err(e) => {
                eprintln!("skipped: {e:#}");
                false
            }
        }
    }

    fn counter(dom: &str) -> u64 {
        let (_, rest) = dom
            .split_once(r#"<span id="n">"#)
            .unwrap_or_else(|| panic!("no counter in\n{dom}"));
        rest.split('<')
            .next()
            .unwrap_or("")
            .parse()
            .expect("a number")
    }

    #[test]
    fn polling_page_runs_and_stays_inside() {
        if !have_chromium() {
            return;
        }
        let origin = serve();
        let dir = tempfile::tempdir().expect("tempdir");
        let png = dir.path().join("page.png");
        let v = visit(&format!("{origin}/"), 1500, Some(&png)).expect("visit");
        let n = counter(&v.dom);
        assert!(n > 2, "the poll did not advance: n = {n}\n{}", v.dom);
        let polls = v
            .requests
            .iter()
            .filter(|u| **u == format!("{origin}/n"))
            .count();
        assert!(polls >= 2, "no /n requests in {:?}", v.requests);
        assert!(
            v.requests.contains(&format!("{origin}/")),
            "{:?}",
            v.requests
        );
        assert_eq!(requests_outside(&v.requests, &origin), Vec::<String>::new());
        let head = std::fs::read(&png).expect("screenshot");
        assert!(head.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    }

    #[test]
    fn external_reference_is_reported() {
        if !have_chromium() {
            return;
        }
        let origin = serve();
        let v = visit(&format!("{origin}/ext"), 500, None).expect("visit");
        assert!(v.dom.contains("external"), "{}", v.dom);
        assert_eq!(
            requests_outside(&v.requests, &origin),
            vec!["http://192.0.2.1/x.png".to_string()],
            "all: {:?}",
            v.requests
        );
    }

    #[test]
    fn unanswered_request_hits_the_timeout() {
        if !have_chromium() {
            return;
        }
        let origin = serve();
        let url = format!("{origin}/hang");
        let t0 = Instant::now();
        let e = visit_within(&url, 500, None, Duration::from_secs(4)).expect_err("a stall");
        let msg = format!("{e:#}");
        assert!(msg.contains(&url) && msg.contains("4s"), "{msg}");
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    }

    #[test]
    fn outside_compares_scheme_host_and_port() {
        let reqs: Vec<String> = [
            "http://127.0.0.1:34567/",
            "http://127.0.0.1:34567/n?x=1",
            "http://127.0.0.1:34568/n",
            "https://127.0.0.1:34567/",
            "http://localhost:34567/",
            "http://192.0.2.1/x.png",
            "ws://127.0.0.1:34567/ws",
            "blob:http://127.0.0.1:34567/uuid",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            requests_outside(&reqs, "http://127.0.0.1:34567"),
            reqs[2..].to_vec()
        );
        assert_eq!(
            requests_outside(&reqs[5..6], "http://192.0.2.1:80"),
            Vec::<String>::new()
        );
        assert_eq!(
            origin("http://[::1]:8080/a"),
            Some(("http".into(), "[::1]".into(), 8080))
        );
    }

    #[test]
    fn truncated_netlog_reads_as_far_as_it_goes() {
        let log = concat!(
            r#"{"constants":{"logEventTypes":{"REQUEST_ALIVE":1,"URL_REQUEST_START_JOB":2}},"#,
            "\n\"events\": [\n",
            r#"{"params":{"url":"http://a/alive"},"phase":1,"source":{"id":1},"type":1},"#,
            "\n",
            r#"{"params":{"initiator":"not an origin","request_type":"main frame","url":"http://a/"},"type":2},"#,
            "\n",
            r#"{"params":{"initiator":"http://a","request_type":"other","url":"http://a/n"},"type":2},"#,
            "\n",
            r#"{"params":{"initiator":"http://a","url":"data:text/plain,x"},"type":2},"#,
            "\n",
            r#"{"params":{"initiator":"not an origin","request_type":"other","url":"https://update.example/"},"type":2},"#,
            "\n",
            r#"{"params":{"initiator":"http://a","request_type":"other","url":"http://a/cut"#,
        );
        let (page, own) = netlog_requests(log);
        assert_eq!(page, vec!["http://a/", "http://a/n"]);
        assert_eq!(own, vec!["https://update.example/"]);
    }
}
