//! A real S3-protocol server for the checkpoint-store tests: moto (PyPI, `moto[server]` 5.x) in
//! server mode on a loopback port, started here and killed on drop. `.ci/run` installs it;
//! without it a test skips locally and fails in CI ([`super::skip_unless_ci`]).
//!
//! moto checks no credentials unless told to, and a server that accepts any secret proves
//! nothing about a wrong one. [`S3Server::start`] is that lenient server (key `test`/`test`);
//! [`S3Server::start_checking_signatures`] sets one up unsigned (a bucket, an IAM user allowed
//! `s3:*`, that user's access key), then switches it to checking every request's SigV4
//! signature and the user's policy, as S3 does, and [`S3Server::env`] hands out that user's key.
//! moto 5.2 then also refuses correctly signed LIST requests (it recomputes the signature over
//! the query with `%2F` decoded), so only single-object requests can succeed against it.

use std::{
    fs::File,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{TempDir, free_port, skip_unless_ci, unique};

/// The region every request is signed for.
const REGION: &str = "us-east-1";

/// A running moto server with one bucket and one access key allowed to use it.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    /// moto's output, shown when it fails to start.
    _logs: TempDir,
}

impl S3Server {
    /// Starts moto with an empty bucket, taking any credentials; `None` (after a loud notice)
    /// when moto is not installed and `CI` is unset. In CI a missing moto is a failure.
    pub async fn start() -> Option<S3Server> {
        Self::start_with(false).await
    }

    /// [`Self::start`], then only requests signed with the key of [`Self::env`] are served (see
    /// the module's note on LIST requests).
    pub async fn start_checking_signatures() -> Option<S3Server> {
        Self::start_with(true).await
    }

    async fn start_with(check_signatures: bool) -> Option<S3Server> {
        let importable = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            skip_unless_ci(
                "S3 checkpoint-store test (moto is not installed: `python3 -c 'import \
                 moto.server'` fails)",
                "install it: python3 -m pip install 'moto[server]>=5,<6' (as .ci/run does)",
            );
            return None;
        }
        let logs = TempDir::new("moto");
        let log = logs.0.join("moto.log");
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            // Set up without authentication; `enable_auth` turns it on.
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("moto log"))
            .stderr(File::create(logs.0.join("moto.err")).expect("moto log"))
            .spawn()
            .expect("start python3 -m moto.server");
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: unique("checkpoints").to_ascii_lowercase(),
            access_key: "test".to_owned(),
            secret_key: "test".to_owned(),
            _logs: logs,
        };
        server.wait_up().await;
        server.set_up(check_signatures).await;
        Some(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket, created empty.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://<bucket>/<prefix>`: a checkpoint-store location.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The secret key of [`Self::env`], for tests that check it is never shown.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The environment of a client of this server (the service binary, or
    /// `Store::open_with_options`): endpoint, the access key, region, plain HTTP.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
            ("AWS_REGION", REGION),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Waits until moto answers (its Python start takes a few seconds).
    async fn wait_up(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto exited at start ({status}): {}", self.output());
            }
            let url = format!("{}/moto-api/data.json", self.endpoint);
            if http.get(url).send().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer within 60 s: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bucket; to check signatures, an IAM user allowed `s3:*` and its access key, then
    /// authentication on.
    async fn set_up(&mut self, check_signatures: bool) {
        let http = reqwest::Client::new();
        let scope = unchecked_authorization;
        let created = http
            .put(format!("{}/{}", self.endpoint, self.bucket))
            .header("authorization", scope("s3"))
            .send()
            .await
            .expect("create bucket");
        assert!(created.status().is_success(), "create bucket: {created:?}");
        if !check_signatures {
            return;
        }

        let user = "checkpoints";
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        let iam = async |form: &[(&str, &str)]| {
            let answer = http
                .post(format!("{}/", self.endpoint))
                .header("authorization", scope("iam"))
                .form(form)
                .send()
                .await
                .expect("IAM request");
            let status = answer.status();
            let body = answer.text().await.expect("IAM answer");
            assert!(status.is_success(), "IAM {form:?}: {status} {body}");
            body
        };
        let version = ("Version", "2010-05-08");
        iam(&[("Action", "CreateUser"), ("UserName", user), version]).await;
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "checkpoints"),
            ("PolicyDocument", policy),
            version,
        ])
        .await;
        let key = iam(&[("Action", "CreateAccessKey"), ("UserName", user), version]).await;
        self.access_key = xml_field(&key, "AccessKeyId");
        self.secret_key = xml_field(&key, "SecretAccessKey");

        // From now on every request must be signed by a known key and allowed by its policy.
        let auth = http
            .post(format!("{}/moto-api/reset-auth", self.endpoint))
            .body("0")
            .send()
            .await
            .expect("enable moto auth");
        assert!(auth.status().is_success(), "enable moto auth: {auth:?}");
    }

    fn output(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self._logs.0.join(name)).unwrap_or_default();
        format!("{}\n{}", read("moto.log"), read("moto.err"))
    }
}

/// An `Authorization` header for `service` that a server started by [`S3Server::start`] takes
/// (moto tells the service from a SigV4 header's credential scope, and checks no signature
/// unless told to): to look at the bucket around the store under test.
pub fn unchecked_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

/// The text of `<name>...</name>` in an IAM answer.
fn xml_field(xml: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + open.len();
    let end = xml[start..].find('<').expect("closing tag") + start;
    xml[start..end].to_owned()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
