//! A real S3 endpoint on loopback: moto's server (PyPI `moto[server]`, installed by
//! `scripts/test.sh`), with the bucket `elf-test`.

use std::io::BufRead;

use crate::process::repo_root;

/// moto's S3 server on loopback, stopped on drop.
#[derive(Debug)]
pub struct S3 {
    child: std::process::Child,
    /// The port it serves on.
    pub port: u16,
}

impl S3 {
    /// Starts it on `port` (0: any free port).
    ///
    /// # Panics
    /// When python3 or moto is missing.
    pub fn start(port: u16) -> Self {
        let script = repo_root().join("e2e/fixtures/s3_server.py");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (installed by scripts/test.sh)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("moto prints its port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("moto did not start: {line:?}"));
        Self { child, port }
    }

    /// Returns the environment that points the AWS clients at it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Stops it (an outage); returns its port, to start it again there.
    pub fn stop(mut self) -> u16 {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
