//! What the integration tests share, one home per fixture:
//!
//! - [`server`]: the in-process HTTP fixture (the real API and server on a loopback port, in
//!   front of a projection filled directly), raw-socket helpers, and the one metrics recorder.
//! - [`model`]: the reference model of the five rules.
//! - [`workload`]: the seeded event generator of the Kafka tests.
//! - [`kafka`]: the broker gate, topics, an independent producer and reader, private brokers.
//! - [`service`]: the launcher of the real binary.
//! - [`client`]: HTTP against a running binary, and the wait for its exact answers.
//! - [`prometheus`]: the text exposition format read the way Prometheus reads it, and `promtool`.
//! - [`s3`]: a real S3-protocol server (moto) with a bucket and a signed-in user.
//! - [`tls`]: a test CA, server certificates, and clients that trust that CA alone.
//!
//! Here, next to them: the one "skip unless CI" gate, the one free-port helper, unique names and
//! temporary folders.

pub mod client;
pub mod kafka;
pub mod model;
pub mod prometheus;
pub mod s3;
pub mod server;
pub mod service;
pub mod tls;
pub mod workload;

use std::{fs, net::TcpListener, path::PathBuf};

use rand::Rng as _;

/// True when CI runs the tests (`CI` is set): a missing broker or tool is then a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// The one gate of the tests that need something this machine may lack (a broker, `promtool`,
/// Chromium): in CI, fails the test with `what` and `how`; otherwise prints a loud notice that
/// the check did not run, and the caller returns.
pub fn skip_unless_ci(what: &str, how: &str) {
    assert!(!in_ci(), "{what} is required in CI; {how}");
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! SKIPPED: {what}. This is NOT evidence of anything.\n!! {how}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// A loopback port nothing listens on right now (the binary is told to listen there).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    )
}

/// A temporary folder removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh one.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
