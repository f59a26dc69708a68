//! The deployment files agree with the binary: docker-compose.yml only sets `PERMIT_STATS_*`
//! variables that the binary's `--help` lists, and its ports and addresses line up (Kafka
//! service, permit-stats, Prometheus' target, Grafana's mounts); the Grafana dashboard has the
//! promised panels and queries only names a live scrape exports, in valid PromQL (`promtool`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::Command,
};

use serde_json::Value;

use crate::support::{
    prometheus::{parse, promtool},
    service::{BINARY, Service},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `PERMIT_STATS_*` variables that `permit-stats <subcommand> --help` lists.
fn accepted_env_vars(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(BINARY)
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
    let service = Service::serve_live(&[], &["--demo"]);
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
