//! Real child processes with their events and logs, and one-shot commands.
//!
//! Nobody picks a port: processes bind port 0 and announce the real address in a JSON `ready`
//! event on stdout, which [`Proc::wait_event`] reads. Each process's stderr is kept (last 200
//! lines) so a failing assertion can show what the process said. Processes are killed on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process with its events and logs.
#[derive(Debug)]
pub struct Proc {
    /// Name used in messages.
    pub name: String,
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
    cursor: usize,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Starts `exe args` with piped output.
    ///
    /// # Panics
    /// If the process cannot start.
    pub fn spawn(name: &str, exe: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start(name, cmd)
    }

    /// Starts `cmd` (a command made elsewhere: on a test host, say) with piped output.
    ///
    /// # Panics
    /// If the process cannot start.
    pub fn start(name: &str, mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("ELF_LOG_FORMAT", "pretty");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {:?}: {e}", cmd.get_program()));
        let (tx, events) = channel();
        let out = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let err = child.stderr.take().expect("piped");
        let keep = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut k = keep.lock().expect("log lock");
                if k.len() == 200 {
                    k.pop_front();
                }
                k.push_back(line);
            }
        });
        Self {
            name: name.into(),
            child,
            events,
            seen: vec![],
            cursor: 0,
            stderr,
        }
    }

    /// Returns the last lines of stderr, prefixed by the process name.
    pub fn logs(&self) -> String {
        let k = self.stderr.lock().expect("log lock");
        k.iter().map(|l| format!("[{}] {l}\n", self.name)).collect()
    }

    /// Waits for the first event named `event`.
    ///
    /// # Panics
    /// On timeout or when the process exits first, with its logs.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Value {
        if let Some(v) = self.seen.iter().find(|v| v["event"] == event) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["event"] == event {
                        return v;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!(
            "{}: no {event:?} event within {timeout:?}\n{}",
            self.name,
            self.logs()
        );
    }

    /// Waits for the next event named `event` after the one the previous call returned (events
    /// before are skipped, so a test can wait for "a checkpoint after the outage").
    ///
    /// # Panics
    /// On timeout, with the process's logs.
    pub fn wait_next(&mut self, event: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen[self.cursor..]
                .iter()
                .position(|v| v["event"] == event)
            {
                self.cursor += i + 1;
                return self.seen[self.cursor - 1].clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no new {event:?} event within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(v) => self.seen.push(v),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => panic!(
                    "{}: exited while waiting for {event:?}\n{}",
                    self.name,
                    self.logs()
                ),
            }
        }
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    /// On timeout (the process is killed), with its logs.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(50)); // let the log threads drain
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{}: did not exit within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a successful exit.
    ///
    /// # Panics
    /// On a failure exit or timeout, with the logs.
    pub fn expect_success(&mut self, timeout: Duration) {
        let s = self.wait_exit(timeout);
        assert!(
            s.success(),
            "{} exited with {s}\n{}",
            self.name,
            self.logs()
        );
    }

    /// Returns the lines of stderr that start with `error:`.
    pub fn error_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.starts_with("error:"))
            .cloned()
            .collect()
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Returns the OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET path` to `addr` and returns the body.
///
/// # Panics
/// On a connection error or a non-200 answer.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {addr}{path}: {head}");
    body.to_string()
}

/// The repository's root folder.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Runs `exe args` to completion in the repository root (logs at `warn`).
pub fn run_in_repo(exe: &str, args: &[&str]) -> std::process::Output {
    Command::new(exe)
        .args(args)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the process runs")
}

/// Asserts success and returns stdout (shows both streams otherwise).
///
/// # Panics
/// When the process failed.
pub fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Asserts failure with exactly one `error:` line on stderr and returns it.
///
/// # Panics
/// When the process succeeded or said more or less than one error line.
pub fn err_line(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected failure");
    let e = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{e}");
    lines[0].to_string()
}
