//! Observability and deployment, checked from outside: the real binary is started, scraped and
//! read the way Prometheus, Grafana, `docker compose` and an operator's log pipeline would.
//!
//! - `/metrics` of a live `serve --demo` passes Prometheus' own `promtool check metrics` and carries
//!   every name, type and label of spec/operations.md with its help text, from the first scrape on.
//! - docker-compose.yml only sets `PERMIT_STATS_*` variables that the binary's `--help` lists, and
//!   its ports and addresses line up (Kafka service, permit-stats, Prometheus' target).
//! - The Grafana dashboard has the promised panels and queries only names the service exports.
//! - `--log-format json` writes one JSON object per line and never a token.
//! - Against a real broker (`KAFKA_BOOTSTRAP`), librdkafka's statistics reach the metrics.
//!
//! `promtool` comes from Debian's `prometheus` package (`.ci/run` installs it). Without it, or
//! without `KAFKA_BOOTSTRAP`, the checks that need it print a loud notice and pass, unless `CI` is
//! set, in which case they fail.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// Every metric of spec/operations.md: name, Prometheus type and label names. Written out here
/// rather than taken from the crate, so that the test checks the contract, not itself.
const PROMISED: &[(&str, &str, &[&str])] = &[
    ("permit_stats_permits", "gauge", &["client", "zone", "type"]),
    ("permit_stats_events_applied_total", "counter", &["kind"]),
    ("permit_stats_events_skipped_total", "counter", &["reason"]),
    (
        "permit_stats_records_rejected_total",
        "counter",
        &["reason"],
    ),
    ("permit_stats_consumer_lag_records", "gauge", &["partition"]),
    ("permit_stats_last_event_timestamp_seconds", "gauge", &[]),
    ("permit_stats_ready", "gauge", &[]),
    (
        "permit_stats_http_requests_total",
        "counter",
        &["route", "status"],
    ),
    (
        "permit_stats_http_request_duration_seconds",
        "histogram",
        &["route"],
    ),
];

/// The librdkafka-statistics families the README documents.
const KAFKA_FAMILIES: &[(&str, &str)] = &[
    ("permit_stats_kafka_broker_up", "gauge"),
    ("permit_stats_kafka_broker_disconnects_total", "counter"),
    ("permit_stats_kafka_consumer_lag_records", "gauge"),
    ("permit_stats_kafka_fetch_queue_records", "gauge"),
    ("permit_stats_kafka_received_bytes_total", "counter"),
];

/// The fixed `route` labels of the HTTP metrics.
const ROUTES: &[&str] = &["stats", "live", "ready", "metrics", "unmatched"];

const DEADLINE: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_permit-stats")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// True when CI runs the tests: a missing tool is then a failure, not a skip.
fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn loud_skip(what: &str, how: &str) {
    assert!(!in_ci(), "{what} is required in CI; {how}");
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! SKIPPED: {what}\n!! {how}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// `promtool`, when installed.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        loud_skip(
            "promtool checks (promtool is not on PATH)",
            "install it: apt-get install -y --no-install-recommends prometheus",
        );
    }
    found
}

/// Runs `promtool check metrics` on a scraped page; panics with its findings unless clean.
fn assert_promtool_clean(promtool: &Path, page: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(page.as_bytes())
        .expect("page written to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics is not clean:\n{findings}\n--- page ---\n{page}"
    );
}

/// A `permit-stats` process of this test; killed when dropped.
struct Service {
    child: Child,
    addr: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Service {
    /// Starts `permit-stats <args> --listen 127.0.0.1:<free port>` (global flags go in `global`).
    fn start(name: &str, global: &[&str], serve: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = std::env::temp_dir();
        let tag = format!("permit-stats-obs-{name}-{}-{port}", std::process::id());
        let stdout = dir.join(format!("{tag}.out"));
        let stderr = dir.join(format!("{tag}.err"));
        let child = Command::new(binary())
            .args(global)
            .arg("serve")
            .args(serve)
            .args(["--listen", &addr.to_string()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("permit-stats starts");
        let service = Self {
            child,
            addr,
            stdout,
            stderr,
        };
        service.wait_for(|s| {
            s.get("/health/live")
                .is_some_and(|(status, _)| status == 200)
        });
        service
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// One HTTP/1.1 request; `None` when the connection fails.
    fn request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, "")
    }

    fn scrape(&self) -> String {
        let (status, page) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "/metrics answered {status}");
        page
    }

    /// Polls `done` until it holds; panics with the service's logs after the deadline.
    fn wait_for(&self, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < DEADLINE,
                "gave up waiting after {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&self) {
        self.wait_for(|s| {
            s.get("/health/ready")
                .is_some_and(|(status, _)| status == 200)
        });
    }

    /// The demo token from the `curl` line `serve --demo` prints.
    fn demo_token(&self) -> String {
        let mut token = None;
        self.wait_for(|s| {
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

    /// Sends SIGTERM (so that shutdown lines are logged too) and waits for the exit.
    fn stop(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        (self.stdout(), self.stderr())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

/// One metric family of a scraped page.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    /// (sample name, labels as written between the braces, value)
    samples: Vec<(String, String, f64)>,
}

/// Parses the text exposition format into families (samples of a histogram go to its family).
fn parse(page: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in page.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.into()).or_default().help = Some(help.into());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
            families.entry(name.into()).or_default().kind = Some(kind.into());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| families.get(*base).is_some_and(|f| f.kind.is_some()))
                })
                .unwrap_or(name);
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().expect("numeric sample value"),
            };
            families.entry(family.into()).or_default().samples.push((
                name.into(),
                labels.into(),
                value,
            ));
        }
    }
    families
}

/// The label names of one sample's label text, `le` left out.
fn label_names(labels: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        let name = name.trim_start_matches(',').trim();
        if name != "le" {
            names.insert(name.to_owned());
        }
        // Skip the quoted value, honouring escapes.
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    names
}

fn label_value<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
        .map(|v| v.trim_end_matches('"'))
}

fn assert_every_promised_family(page: &str, with_samples: bool) {
    let families = parse(page);
    let described = |name: &str, kind: &str| {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} is missing from /metrics:\n{page}"));
        assert!(
            family.help.as_deref().is_some_and(|h| !h.trim().is_empty()),
            "{name} has no help text"
        );
        assert_eq!(
            family.kind.as_deref(),
            Some(kind),
            "{name} has the wrong TYPE"
        );
        family
    };
    for &(name, kind, labels) in PROMISED {
        let family = described(name, kind);
        if with_samples {
            assert!(!family.samples.is_empty(), "{name} has no series:\n{page}");
            let expected: BTreeSet<String> = labels.iter().map(|l| (*l).to_owned()).collect();
            for (sample, sample_labels, _) in &family.samples {
                assert_eq!(
                    label_names(sample_labels),
                    expected,
                    "labels of {sample}{{{sample_labels}}}"
                );
            }
        }
    }
    for &(name, kind) in KAFKA_FAMILIES {
        described(name, kind);
    }
}

#[test]
fn live_scrape_passes_promtool_and_carries_every_promised_name() {
    let promtool = promtool();
    let service = Service::start("scrape", &[], &["--demo"]);

    // The first scrape, before anything else: every family is there with HELP and TYPE, and the
    // HTTP series exist before the first request they count.
    let first = service.scrape();
    assert_every_promised_family(&first, false);
    for route in ROUTES {
        assert!(
            first.contains(&format!(
                "permit_stats_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"0.0001\"}}"
            )),
            "no latency series for route {route} on the first scrape:\n{first}"
        );
    }
    assert!(first.contains("permit_stats_http_requests_total{route=\"stats\",status=\"200\"}"));
    if let Some(promtool) = &promtool {
        assert_promtool_clean(promtool, &first);
    }

    service.wait_ready();
    let token = service.demo_token();
    let stats = "/api/OC-TOMA/v1/permits/stats";
    let ok = service
        .request("POST", stats, &format!("{{\"apiToken\":\"{token}\"}}"))
        .expect("stats answers");
    assert_eq!(ok.0, 200, "{ok:?}");
    let forbidden = service
        .request("POST", stats, "{\"apiToken\":\"not-a-known-token\"}")
        .expect("stats answers");
    assert_eq!(forbidden.0, 403);
    assert_eq!(service.get("/no/such/path").map(|r| r.0), Some(404));
    // Live permits appear as the demo streams, and librdkafka's statistics arrive every second.
    service.wait_for(|s| {
        let page = s.scrape();
        page.contains("\npermit_stats_permits{")
            && page.contains("\npermit_stats_kafka_broker_up{")
            && page.contains("\npermit_stats_kafka_consumer_lag_records{")
    });

    let page = service.scrape();
    if let Some(promtool) = &promtool {
        assert_promtool_clean(promtool, &page);
    }
    assert_every_promised_family(&page, true);
    let families = parse(&page);
    let value = |name: &str, labels: &str| {
        families
            .values()
            .flat_map(|f| &f.samples)
            .find(|(sample, l, _)| sample == name && l == labels)
            .map(|s| s.2)
    };
    assert_eq!(value("permit_stats_ready", ""), Some(1.0));
    assert!(
        value(
            "permit_stats_http_requests_total",
            "route=\"stats\",status=\"200\""
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        value(
            "permit_stats_http_requests_total",
            "route=\"stats\",status=\"403\""
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        value(
            "permit_stats_http_request_duration_seconds_count",
            "route=\"stats\""
        )
        .is_some_and(|n| n >= 2.0)
    );
    assert!(value("permit_stats_last_event_timestamp_seconds", "").is_some_and(|t| t > 1e9));
    assert!(
        value("permit_stats_events_applied_total", "kind=\"created\"").is_some_and(|n| n > 0.0)
    );
    // The latency buckets resolve sub-millisecond answers.
    let bounds: Vec<f64> = families["permit_stats_http_request_duration_seconds"]
        .samples
        .iter()
        .filter(|(_, l, _)| l.starts_with("route=\"stats\""))
        .filter_map(|(_, l, _)| label_value(l, "le"))
        .filter_map(|le| le.parse().ok())
        .collect();
    assert!(
        bounds.iter().filter(|&&b| b < 0.001).count() >= 5,
        "too few sub-millisecond buckets: {bounds:?}"
    );
    // Every route label is one the pre-registered list knows (no drift from the router).
    for (_, labels, _) in &families["permit_stats_http_requests_total"].samples {
        let route = label_value(labels, "route").expect("route label");
        assert!(ROUTES.contains(&route), "unexpected route {route}");
    }
    // The permit gauges are the numbers the API serves.
    let answer: Value = serde_json::from_str(&ok.1).expect("stats JSON");
    assert!(answer["data"].is_array());
    // The embedded broker's connection is up.
    assert!(
        families["permit_stats_kafka_broker_up"]
            .samples
            .iter()
            .any(|s| s.2 == 1.0)
    );

    let (_, stderr) = service.stop();
    assert!(
        !stderr.contains("\x1b["),
        "text logs to a file must not carry colour codes"
    );
    assert!(!stderr.contains(&token), "the demo token was logged");
}

#[test]
fn every_promised_name_is_there_while_the_broker_is_unreachable() {
    let promtool = promtool();
    let dir = std::env::temp_dir().join(format!("permit-stats-obs-tokens-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("tokens.toml");
    fs::write(&tokens, token_entry("OC-TOMA")).expect("token file");
    // Port 1 on loopback: nothing listens there, so ingest waits for the broker's metadata.
    let service = Service::start(
        "unreachable",
        &[],
        &[
            "--brokers",
            "127.0.0.1:1",
            "--tokens",
            tokens.to_str().expect("UTF-8 path"),
        ],
    );
    let page = service.scrape();
    assert_every_promised_family(&page, false);
    assert!(page.contains("\npermit_stats_ready 0\n"), "{page}");
    if let Some(promtool) = &promtool {
        assert_promtool_clean(promtool, &page);
    }
    let _ = fs::remove_dir_all(&dir);
}

/// The token-file entry of a fresh token, from `permit-stats token`.
fn token_entry(client: &str) -> String {
    let out = Command::new(binary())
        .args(["token", "--client", client, "--name", "observability-test"])
        .output()
        .expect("permit-stats token runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `PERMIT_STATS_*` variables that `permit-stats <subcommand> --help` lists.
fn accepted_env_vars(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(binary())
        .args([subcommand, "--help"])
        .env_remove("PERMIT_STATS_LOG_FORMAT")
        .output()
        .expect("permit-stats --help runs");
    assert!(out.status.success(), "{subcommand} --help failed");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

fn compose() -> Value {
    let text = fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_norway::from_str(&text).expect("docker-compose.yml is valid YAML")
}

/// A service's environment as a map (compose allows a map or a list of `KEY=VALUE`).
fn environment(service: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match &service["environment"] {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The subcommand a service of our image runs (its `command`, first word).
fn subcommand(service: &Value) -> String {
    match &service["command"] {
        Value::Array(words) => words.first().and_then(Value::as_str).map(str::to_owned),
        Value::String(line) => line.split_whitespace().next().map(str::to_owned),
        _ => None,
    }
    .expect("a service of the permit-stats image names its subcommand")
}

/// The host and port of a `host:port` address.
fn host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    (host.to_owned(), port.parse().expect("numeric port"))
}

#[test]
fn compose_sets_only_real_flags_and_its_ports_line_up() {
    let compose = compose();
    let services = compose["services"]
        .as_object()
        .expect("compose has services");

    // Kafka: the official image, KRaft, one node that is broker and controller.
    let (kafka_name, kafka) = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("apache/kafka:"))
        })
        .expect("a service runs the official apache/kafka image");
    let kafka_env = environment(kafka);
    assert_eq!(kafka_env["KAFKA_PROCESS_ROLES"], "broker,controller");
    let advertised = &kafka_env["KAFKA_ADVERTISED_LISTENERS"];

    // Every service built from this repository runs the binary with real flags only.
    let ours: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .collect();
    let mut subcommands = BTreeSet::new();
    for (name, service) in &ours {
        let build = &service["build"];
        let context = build.as_str().or_else(|| build["context"].as_str());
        assert_eq!(context, Some("."), "{name} is built from this repository");
        let sub = subcommand(service);
        let accepted = accepted_env_vars(&sub);
        let env = environment(service);
        for key in env.keys().filter(|k| k.starts_with("PERMIT_STATS_")) {
            assert!(
                accepted.contains(key),
                "{name}: {key} is not a flag of `permit-stats {sub}` (it accepts {accepted:?})"
            );
        }
        // Pointed at the Kafka service, on a listener it advertises under that name.
        let brokers = env
            .get("PERMIT_STATS_BROKERS")
            .unwrap_or_else(|| panic!("{name} sets PERMIT_STATS_BROKERS"));
        for broker in brokers.split(',') {
            let (host, _) = host_port(broker);
            assert!(
                &host == kafka_name || kafka["hostname"].as_str() == Some(&host),
                "{name}: broker {broker} is not the Kafka service {kafka_name}"
            );
            assert!(
                advertised.contains(&format!("://{broker}")),
                "{name}: {broker} is not among Kafka's advertised listeners {advertised}"
            );
        }
        assert_eq!(
            env.get("PERMIT_STATS_TOPIC"),
            environment(ours[0].1).get("PERMIT_STATS_TOPIC"),
            "producer and service use one topic"
        );
        subcommands.insert(sub);
    }
    assert!(subcommands.contains("serve") && subcommands.contains("produce"));

    // The Dockerfile's own defaults are flags of `serve` (its default command) too.
    let dockerfile = fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let serve_vars = accepted_env_vars("serve");
    for word in dockerfile.split(|c: char| c.is_whitespace() || c == '=') {
        if word.starts_with("PERMIT_STATS_") {
            assert!(serve_vars.contains(word), "Dockerfile sets unknown {word}");
        }
    }

    // Prometheus scrapes permit-stats at the address it listens on.
    let (serve_name, serve) = ours
        .iter()
        .find(|(_, s)| subcommand(s) == "serve")
        .expect("a serve service");
    let serve_env = environment(serve);
    let (listen_host, listen_port) = host_port(&serve_env["PERMIT_STATS_LISTEN"]);
    assert_eq!(
        listen_host, "0.0.0.0",
        "in a container the API must listen on every interface"
    );
    let published: Vec<String> = serve["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{listen_port}"))),
        "{serve_name} publishes its listen port: {published:?}"
    );
    let tokens = &serve_env["PERMIT_STATS_TOKENS"];
    let mounted = volume_source(serve, tokens).expect("the token file is mounted");
    assert!(repo().join(&mounted).is_file(), "{mounted} exists");

    let (_, prometheus) = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("prom/prometheus"))
        })
        .expect("a Prometheus service");
    let config_path = volume_source(prometheus, "/etc/prometheus/prometheus.yml")
        .expect("Prometheus gets its config from the repository");
    let config: Value = serde_norway::from_str(
        &fs::read_to_string(repo().join(&config_path)).expect("Prometheus config"),
    )
    .expect("Prometheus config is YAML");
    let targets: Vec<&str> = config["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|job| job["static_configs"].as_array().into_iter().flatten())
        .flat_map(|sc| sc["targets"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        targets.contains(&format!("{serve_name}:{listen_port}").as_str()),
        "Prometheus scrapes {targets:?}, not {serve_name}:{listen_port}"
    );

    // Grafana gets the provisioning and the dashboards of the repository.
    let (_, grafana) = services
        .iter()
        .find(|(_, s)| s["image"].as_str().is_some_and(|i| i.contains("grafana")))
        .expect("a Grafana service");
    for target in ["/etc/grafana/provisioning", "/var/lib/grafana/dashboards"] {
        let source = volume_source(grafana, target).expect("Grafana mount");
        assert!(repo().join(&source).is_dir(), "{source} exists");
    }
}

/// The repository path mounted at `target` in a service (short volume syntax).
fn volume_source(service: &Value, target: &str) -> Option<String> {
    service["volumes"].as_array()?.iter().find_map(|v| {
        let mut parts = v.as_str()?.split(':');
        let source = parts.next()?;
        (parts.next()? == target).then(|| source.trim_start_matches("./").to_owned())
    })
}

#[test]
fn dashboard_has_the_promised_panels_and_queries_only_exported_names() {
    let path = repo().join("deploy/grafana/dashboards/permit-stats.json");
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("dashboard JSON")).expect("JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dashboard["panels"].as_array().expect("panels");

    // The datasource the panels name is the one provisioned.
    let provisioned: Value = serde_norway::from_str(
        &fs::read_to_string(repo().join("deploy/grafana/provisioning/datasources/prometheus.yml"))
            .expect("datasource provisioning"),
    )
    .expect("YAML");
    let uid = provisioned["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");

    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut titles = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "panel ids are unique"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        titles.push(panel["title"].as_str().expect("title").to_owned());
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty());
        for target in targets {
            exprs.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    let queried = |needle: &str| exprs.iter().any(|(_, e)| e.contains(needle));
    assert!(queried("sum by (zone, type) (permit_stats_permits"));
    assert!(queried("rate(permit_stats_events_applied_total"));
    assert!(queried("rate(permit_stats_records_rejected_total"));
    assert!(queried("permit_stats_consumer_lag_records"));
    assert!(queried("permit_stats_ready"));
    assert!(queried("rate(permit_stats_http_requests_total"));
    for q in ["0.5", "0.9", "0.99"] {
        assert!(
            queried(&format!(
                "histogram_quantile({q}, sum by (le) (rate(permit_stats_http_request_duration_seconds_bucket"
            )),
            "latency quantile {q}"
        );
    }

    // Every name a query uses is one the service exports (on a live scrape, with its TYPE).
    let service = Service::start("dashboard", &[], &["--demo"]);
    let exported = parse(&service.scrape());
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| exported.get(*b).and_then(|f| f.kind.as_deref()) == Some("histogram"))
                .unwrap_or(&name);
            assert!(
                exported.get(base).is_some_and(|f| f.kind.is_some()),
                "panel {title:?} queries {name}, which /metrics does not export"
            );
        }
    }

    // And each query is valid PromQL, once Grafana's variables are filled in.
    if let Some(promtool) = promtool() {
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, (_, expr)) in exprs.iter().enumerate() {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$client", ".*")
                .replace("$route", "stats");
            rules.push_str(&format!(
                "      - record: dashboard:query{i}\n        expr: {}\n",
                serde_json::to_string(&expr).expect("string")
            ));
        }
        let file = std::env::temp_dir().join(format!(
            "permit-stats-dashboard-rules-{}.yml",
            std::process::id()
        ));
        fs::write(&file, rules).expect("rules file");
        let out = Command::new(promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("promtool check rules");
        let _ = fs::remove_file(&file);
        assert!(
            out.status.success(),
            "dashboard PromQL:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `permit_stats_*` names an expression mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("permit_stats_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn json_logs_are_objects_with_level_and_message_and_never_a_token() {
    let service = Service::start("json", &["--log-format", "json"], &["--demo"]);
    service.wait_ready();
    let token = service.demo_token();
    let stats = "/api/OC-TOMA/v1/permits/stats";
    let wrong = "wrong-token-0123456789";
    for body in [
        format!("{{\"apiToken\":\"{token}\",\"zones\":\"Lot 01\"}}"),
        format!("{{\"apiToken\":\"{wrong}\"}}"),
    ] {
        assert!(service.request("POST", stats, &body).is_some());
    }
    let (_, stderr) = service.stop();

    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(object["level"].is_string(), "no level: {line}");
        assert!(object["timestamp"].is_string(), "no timestamp: {line}");
        let message = object["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message: {line}"));
        messages.push(message.to_owned());
        assert!(!line.contains(&token), "the demo token was logged: {line}");
        assert!(
            !line.contains(wrong),
            "a request's token was logged: {line}"
        );
    }
    let said = |what: &str| messages.iter().any(|m| m.contains(what));
    assert!(said("replay"), "no replay line in {messages:?}");
    assert!(said("ready"), "no ready line in {messages:?}");
    assert!(said("listening"), "no listening line in {messages:?}");
}

#[test]
fn librdkafka_statistics_of_a_real_broker_reach_the_metrics() {
    let Some(bootstrap) = std::env::var("KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
    else {
        loud_skip(
            "librdkafka statistics against a real broker (KAFKA_BOOTSTRAP is not set)",
            "run: scripts/kafka.sh run -- cargo test --test observability",
        );
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let topic = format!("obs-{}-{nanos}", std::process::id());
    let produced = Command::new(binary())
        .args(["produce", "--brokers", &bootstrap, "--topic", &topic])
        .args(["--create-partitions", "2", "--events", "500"])
        .output()
        .expect("permit-stats produce runs");
    assert!(
        produced.status.success(),
        "produce failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let dir = std::env::temp_dir().join(format!("permit-stats-obs-kafka-{nanos}"));
    fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("tokens.toml");
    fs::write(&tokens, token_entry("OC-TOMA")).expect("token file");
    let service = Service::start(
        "kafka",
        &[],
        &[
            "--brokers",
            &bootstrap,
            "--topic",
            &topic,
            "--tokens",
            tokens.to_str().expect("UTF-8 path"),
        ],
    );
    service.wait_ready();
    service.wait_for(|s| {
        let page = s.scrape();
        page.contains("permit_stats_kafka_consumer_lag_records{partition=\"0\"} 0\n")
            && page.contains("permit_stats_kafka_consumer_lag_records{partition=\"1\"} 0\n")
            && page.contains("\npermit_stats_kafka_broker_up{")
    });
    let page = service.scrape();
    let families = parse(&page);
    let up = &families["permit_stats_kafka_broker_up"].samples;
    assert!(
        up.iter().any(|(_, labels, v)| *v == 1.0
            && label_value(labels, "broker").is_some_and(|b| b.contains(bootstrap.as_str()))),
        "no broker of {bootstrap} is up: {up:?}"
    );
    assert!(
        families["permit_stats_kafka_received_bytes_total"].samples[0].2 > 0.0,
        "nothing received"
    );
    if let Some(promtool) = promtool() {
        assert_promtool_clean(&promtool, &page);
    }
    drop(service);
    let _ = fs::remove_dir_all(&dir);
}
