//! The one launcher of the real binary (`env!("CARGO_BIN_EXE_permit-stats")`): `permit-stats
//! serve` on a free loopback port, its stdout and stderr (the logs) in files of a folder of its
//! own, with what the tests do to it from outside: signals, exit status, resident memory, the
//! output so far, raw HTTP/1.1 requests, and waits with a deadline. Also the token files the
//! binary is started with.
//!
//! Killed on drop if it still runs; the tail of its log is printed when the test failed.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use permit_stats::api::auth;

use super::{TempDir, free_port, workload::CLIENTS};

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_permit-stats");

/// How long the blocking waits ([`Service::wait_until`] and the ones built on it) may take.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `permit-stats serve`.
#[derive(Debug)]
pub struct Service {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    socket: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
    /// When it was started.
    pub started: Instant,
    /// Holds the output files; dropped after the child is gone.
    _dir: TempDir,
}

impl Service {
    /// Starts `permit-stats <global> serve <serve> --listen 127.0.0.1:<free port>`, with
    /// `RUST_LOG` set to `rust_log` (or unset, for the binary's default).
    pub fn serve(global: &[&str], serve: &[&str], rust_log: Option<&str>) -> Self {
        Self::serve_with_env(global, serve, rust_log, &[])
    }

    /// [`Service::serve`] with extra environment variables (`PERMIT_STATS_...`).
    pub fn serve_with_env(
        global: &[&str],
        serve: &[&str],
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let socket = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = TempDir::new("permit-stats-service");
        let stdout = dir.0.join("stdout.log");
        let stderr = dir.0.join("stderr.log");
        let mut command = Command::new(BINARY);
        command
            .args(global)
            .arg("serve")
            .args(serve)
            .args(["--listen", &socket.to_string()])
            .env_remove("PERMIT_STATS_DEMO")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"));
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command.spawn().expect("start permit-stats serve");
        Self {
            child: Some(child),
            base: format!("http://{socket}"),
            addr: socket.to_string(),
            socket,
            stdout,
            stderr,
            started: Instant::now(),
            _dir: dir,
        }
    }

    /// [`Service::serve`] with the binary's default logging, once `/health/live` answers.
    pub fn serve_live(global: &[&str], serve: &[&str]) -> Self {
        let mut service = Self::serve(global, serve, None);
        service.wait_live();
        service
    }

    /// Starts it against the broker `bootstrap` and `topic` with a token file and extra flags,
    /// logging at `info` (librdkafka's own lines at `warn`).
    pub fn start(bootstrap: &str, topic: &str, tokens: &Path, extra: &[&str]) -> Self {
        let tokens = tokens.to_str().expect("utf-8 path");
        let mut args = vec!["--brokers", bootstrap, "--topic", topic, "--tokens", tokens];
        args.extend_from_slice(extra);
        Self::serve(&[], &args, Some("info,librdkafka=warn"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr (its log) so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its whole output so far: the log, then stdout.
    pub fn log_text(&self) -> String {
        self.stderr() + &self.stdout()
    }

    /// The last 60 lines of its output.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Panics, with its log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "permit-stats exited unexpectedly ({status}); its log:\n{}",
                self.log_tail()
            );
        }
    }

    /// Sends a signal (`TERM`, `KILL`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then up to 10 s; the exit status, or `None` if it had to be killed.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(10));
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// SIGTERM (so that the shutdown is logged too), up to 15 s for the exit; then its stdout
    /// and stderr.
    pub fn stop(mut self) -> (String, String) {
        if self.child.is_some() {
            self.signal("TERM");
            self.wait_exit(Duration::from_secs(15));
        }
        (self.stdout(), self.stderr())
    }

    /// Resident memory of the process, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// One HTTP/1.1 request on a connection of its own; `None` when the connection fails.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.socket, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.socket,
            body.len()
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    /// A GET of `path`; `None` when the connection fails.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, "")
    }

    /// `/metrics`, which must answer 200.
    pub fn scrape(&self) -> String {
        let (status, page) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "/metrics answered {status}");
        page
    }

    /// Polls `done` every 100 ms until it holds; panics with the log if the process exits or
    /// [`DEADLINE`] passes first.
    pub fn wait_until(&mut self, why: &str, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            self.assert_running();
            assert!(
                start.elapsed() < DEADLINE,
                "gave up waiting for {why} after {DEADLINE:?}; log:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `what` every 50 ms until it returns something; panics with the log if the process
    /// exits or `within` passes first.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        why: &str,
        mut what: impl AsyncFnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = what(self).await {
                return found;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {why}; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/health/live` answers 200.
    pub fn wait_live(&mut self) {
        self.wait_until("/health/live", |s| {
            s.get("/health/live")
                .is_some_and(|(status, _)| status == 200)
        });
    }

    /// Waits until `/health/ready` answers 200.
    pub fn wait_ready(&mut self) {
        self.wait_until("/health/ready", |s| {
            s.get("/health/ready")
                .is_some_and(|(status, _)| status == 200)
        });
    }

    /// The demo token from the `curl` line `serve --demo` prints.
    pub fn demo_token(&mut self) -> String {
        let mut token = None;
        self.wait_until("the demo's curl", |s| {
            token = s.stdout().split("\"apiToken\":\"").nth(1).and_then(|rest| {
                rest.split('"')
                    .next()
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
            });
            token.is_some()
        });
        token.expect("waited for it")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("---- permit-stats log ----\n{}\n----", self.log_tail());
        }
    }
}

/// SIGTERM; the service must exit 0.
pub fn assert_clean_exit(service: &mut Service) {
    let status = service.terminate();
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}");
}

/// Writes a token file with one token per client of [`CLIENTS`].
pub fn write_tokens(dir: &Path) -> (PathBuf, HashMap<String, String>) {
    write_tokens_for(dir, &CLIENTS, |_| "kafka test".to_owned())
}

/// Writes a token file with one token per client, each named by `name(client)`.
pub fn write_tokens_for(
    dir: &Path,
    clients: &[&str],
    name: impl Fn(&str) -> String,
) -> (PathBuf, HashMap<String, String>) {
    let mut text = String::new();
    let mut tokens = HashMap::new();
    for &client in clients {
        let token = auth::generate();
        text.push_str(&auth::entry_for(&token, client, &name(client)).expect("entry"));
        tokens.insert(client.to_owned(), token);
    }
    let path = dir.join("tokens.toml");
    fs::write(&path, text).expect("write token file");
    (path, tokens)
}
