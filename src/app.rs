//! The wiring of `permit-stats serve` and `permit-stats token`: what starts, in which order, and
//! how it all stops.
//!
//! One cancellation token stops everything. SIGTERM or Ctrl-C: the listener stops accepting,
//! in-flight requests get a bounded grace period, the ingest thread, the demo producer, the token
//! and certificate reloads and the metrics upkeep stop, and the process exits 0. An unexpected
//! exit of the server or the ingest thread stops the process with an error.
//!
//! This is also the one place that turns the command line ([`crate::config`]) into each part's own
//! configuration: [`api::Limits`], ingest's settings, the log format.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    api::{
        self, AppState,
        auth::{self, Tokens},
        tls::{self, Tls, TlsFiles},
    },
    config::{self, LogFormat, ProduceArgs, ServeArgs, TokenArgs, ValueFormat},
    ingest::{self, IngestConfig, embedded::EmbeddedBroker},
    kafka::{KafkaSettings, retention},
    produce,
    projection::Projection,
    status::IngestStatus,
    telemetry,
};

mod history;

pub(crate) use history::{checkpoint, replay};

/// How long the consumer thread and the demo producer get to stop, beyond the grace period.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// How long the last checkpoint, cut at shutdown, may take to be written, beyond the grace
/// period.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(20);

/// Added to the HTTP worker threads' nice value; 0 leaves them at the process's priority.
const HTTP_NICE: i32 = 0;

/// The client code of the demo's permits and token.
const DEMO_CLIENT: &str = "OC-TOMA";

/// Starts logging to stderr in the format `--log-format` asks for.
pub(crate) fn init_logs(format: LogFormat) {
    telemetry::init_tracing(match format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    });
}

/// The limits `permit-stats serve` was given.
fn limits(args: &ServeArgs) -> api::Limits {
    api::Limits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        body_read_timeout: Duration::from_secs(args.body_read_timeout),
        max_connections: args.max_connections,
        rate_limit: args
            .rate_limit
            .map(|limit| rate_limit(limit, args.rate_limit_burst)),
    }
}

/// `--tls-cert` and `--tls-key`, when given (clap makes sure both are, or neither).
fn tls_files(args: &ServeArgs) -> Option<TlsFiles> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    }
}

/// `--rate-limit` and `--rate-limit-burst` as the API enforces them: the burst defaults to one
/// period's worth.
fn rate_limit(limit: config::RateLimit, burst: Option<NonZeroU32>) -> api::RateLimit {
    let rate = api::RateLimit::new(limit.requests, limit.period);
    match burst {
        Some(burst) => rate.with_burst(burst),
        None => rate,
    }
}

/// Runs the service until SIGTERM or Ctrl-C.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // First: every metric handle taken from here on (ingest's among them) must reach it.
    let metrics = telemetry::install().context("cannot install the metrics recorder")?;
    let mut tokens = match &args.tokens {
        Some(path) => Tokens::load(path)?,
        None => Tokens::default(),
    };
    // HTTPS: a certificate or key that does not load stops the start, like a bad token file.
    let tls = match tls_files(&args) {
        Some(files) => Some((Tls::load(&files)?, files)),
        None => None,
    };
    let kafka = kafka_settings(args.brokers.as_deref(), &args.kafka)?;
    let embedded = match kafka.bootstrap() {
        Some(_) => None,
        None => {
            let broker = EmbeddedBroker::start(&args.topic, args.embedded_partitions)?;
            info!(
                bootstrap = broker.bootstrap_servers(),
                topic = %args.topic,
                "no --brokers given: started the embedded broker (librdkafka's mock cluster; \
                 for a first look, not for production)"
            );
            Some(broker)
        }
    };
    let kafka = match &embedded {
        Some(broker) => kafka.with_bootstrap(broker.bootstrap_servers()),
        None => kafka,
    };
    if kafka.has_options() {
        // Secrets are redacted by the settings' Display.
        info!(settings = %kafka, "Kafka client settings");
    }
    let demo_token = args.demo.then(|| {
        let token = auth::generate();
        tokens.add(&token, DEMO_CLIENT, "demo");
        token
    });
    info!(tokens = tokens.len(), "tokens loaded");

    let cancel = CancellationToken::new();
    let projection = Arc::new(Projection::new());
    let status = Arc::new(IngestStatus::new());
    if args.dead_letter_topic.as_deref() == Some(args.topic.as_str()) {
        // Each copy would be read back as a bad record and copied again, forever.
        bail!(
            "--dead-letter-topic must differ from --topic (both are {})",
            args.topic
        );
    }

    let demo_stop = Arc::new(AtomicBool::new(false));
    let demo = if args.demo {
        Some(spawn_demo(&kafka, &args.topic, args.demo_rate, &demo_stop)?)
    } else {
        None
    };

    let http_workers = args
        .http_workers
        .unwrap_or_else(|| thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN));
    let listeners = api::bind(args.listen, http_workers)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listeners
        .first()
        .expect("bind makes at least one listener")
        .local_addr()
        .context("listener has no address")?;
    info!(%addr, topic = %args.topic, "listening");
    if let Some(token) = &demo_token {
        print_demo_curl(addr, token, if tls.is_some() { "https" } else { "http" });
    }

    let state = AppState {
        projection: Arc::clone(&projection),
        tokens: Arc::new(ArcSwap::from_pointee(tokens)),
        status: Arc::clone(&status),
        metrics,
    };
    // Token reload (SIGHUP, file changes) and the server's limits: see api/auth/reload.rs and
    // api/limits.rs.
    let poll = Some(Duration::from_secs(args.tokens_poll_interval)).filter(|p| !p.is_zero());
    let shared_tokens = Arc::clone(&state.tokens);
    let mut background = vec![
        (
            "token reload",
            auth::spawn_reload(args.tokens.clone(), shared_tokens, poll, cancel.clone()),
        ),
        ("metrics upkeep", state.metrics.spawn_upkeep(cancel.clone())),
    ];
    // Warns when the topic will lose the history the counts need (kafka/retention.rs); not for
    // the embedded broker, which has no admin API and is not for production anyway.
    if embedded.is_none() {
        let (kafka, topic, cancel) = (kafka.clone(), args.topic.clone(), cancel.clone());
        let checkpoint_store = args.checkpoint_store.is_some();
        background.push((
            "topic retention check",
            tokio::spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = retention::check(&kafka, &topic, checkpoint_store) => {}
                }
            }),
        ));
    }
    // The certificate's reload (SIGHUP, file changes): see api/tls.rs.
    if let Some((tls, files)) = &tls {
        let poll = Some(Duration::from_secs(args.tls_poll_interval)).filter(|p| !p.is_zero());
        background.push((
            "certificate reload",
            tls::spawn_reload(files.clone(), tls.clone(), poll, cancel.clone()),
        ));
    }
    let limits = limits(&args);
    let api = api::Api::new(state, &limits);
    // The HTTP workers: threads of their own, one runtime and accept queue each (api/server.rs).
    let workers = api::Workers::spawn(
        listeners,
        api,
        limits,
        tls.map(|(tls, _)| tls),
        HTTP_NICE,
        cancel.clone(),
    )
    .context("cannot start the HTTP workers")?;
    let abort_http = workers.abort_token();
    let mut server = tokio::spawn(workers.join());

    // History: the newest usable checkpoint, then only the records after it. After the server
    // has started, so that liveness answers while a large checkpoint is read (the stats request
    // answers 503 until the replay is done).
    let checkpoints = match &args.checkpoint_store {
        Some(location) => Some(history::open(location, &args.topic, args.checkpoint_keep)?),
        None => None,
    };
    let start = match &checkpoints {
        Some(checkpoints) => {
            history::restore(checkpoints, &kafka, &args.topic, &projection, None).await
        }
        None => history::Start::default(),
    };
    let (sink, checkpoint_writer) = match checkpoints {
        Some(checkpoints) => {
            let every = Duration::from_secs(args.checkpoint_interval);
            let (sink, writer) = history::spawn_writer(checkpoints, every);
            (Some(sink), Some(writer))
        }
        None => (None, None),
    };
    let mut ingest = ingest::spawn(
        IngestConfig {
            dead_letter_topic: args.dead_letter_topic.clone(),
            metadata_every: metadata_every(&args),
            start: start.marks,
            history_missing_before: start.history_missing,
            allow_missing_history: args.allow_missing_history,
            checkpoints: sink,
            ..IngestConfig::new(kafka.clone(), args.topic.clone())
        },
        Arc::clone(&projection),
        Arc::clone(&status),
        cancel.clone(),
    )?;
    let mut ingest_done = false;

    let outcome = tokio::select! {
        () = shutdown_signal() => {
            info!("shutdown requested: draining");
            Ok(())
        }
        result = &mut server => Err(anyhow!("the HTTP server stopped unexpectedly: {result:?}")),
        result = &mut ingest => {
            ingest_done = true;
            Err(match result {
                Ok(Err(e)) => anyhow::Error::new(e).context("the ingest thread stopped"),
                Ok(Ok(())) => anyhow!("the ingest thread stopped unexpectedly"),
                Err(_) => anyhow!("the ingest thread panicked"),
            })
        }
    };
    // The listener closes at once (new connections are refused), in-flight requests go on.
    cancel.cancel();
    demo_stop.store(true, Ordering::Relaxed);

    // One deadline for the whole drain, so the exit is bounded whatever hangs: requests get the
    // grace period, the consumer thread and the demo producer at most STOP_WAIT beyond it. A
    // thread still running then (e.g. inside a request to an unreachable broker) ends with
    // the process.
    let grace = Duration::from_secs(args.shutdown_grace);
    let deadline = tokio::time::Instant::now() + grace;
    if !server.is_finished()
        && tokio::time::timeout_at(deadline, &mut server)
            .await
            .is_err()
    {
        warn!(
            grace_seconds = args.shutdown_grace,
            "in-flight requests did not finish in time"
        );
        abort_http.cancel();
        server.abort();
    }
    let threads_deadline = deadline.max(tokio::time::Instant::now() + STOP_WAIT);
    if !ingest_done
        && tokio::time::timeout_at(threads_deadline, &mut ingest)
            .await
            .is_err()
    {
        warn!("the ingest thread did not stop in time");
    }
    // Ingest cut the last checkpoint as it stopped; the writer ends once that one is written.
    if let Some(mut writer) = checkpoint_writer
        && tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now()) + CHECKPOINT_WAIT,
            &mut writer,
        )
        .await
        .is_err()
    {
        warn!("the last checkpoint was not written in time");
        writer.abort();
    }
    if let Some(demo) = demo {
        while !demo.is_finished() && tokio::time::Instant::now() < threads_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // They stop at the cancellation, between two of their steps: this is a formality unless one
    // is stuck in a step (a token file on a hung network filesystem).
    for (name, mut task) in background {
        match tokio::time::timeout_at(threads_deadline, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(task = name, "background task failed: {e}"),
            Err(_) => {
                warn!(task = name, "background task did not stop in time");
                task.abort();
            }
        }
    }
    drop(embedded);
    if let Err(e) = &outcome {
        error!("{e:#}");
    } else {
        info!("stopped");
    }
    outcome
}

/// `--metadata-interval` as ingest takes it.
fn metadata_every(args: &ServeArgs) -> Duration {
    Duration::from_secs(args.metadata_interval)
}

/// The Kafka client settings of `--brokers`, `--kafka-config` and `--kafka-option`.
fn kafka_settings(
    brokers: Option<&str>,
    args: &config::KafkaArgs,
) -> anyhow::Result<KafkaSettings> {
    KafkaSettings::load(brokers, args.kafka_config.as_deref(), &args.options())
        .context("invalid Kafka client settings")
}

/// `produce --compression` as the producer takes it.
fn compression(codec: config::Compression) -> produce::Compression {
    match codec {
        config::Compression::None => produce::Compression::None,
        config::Compression::Gzip => produce::Compression::Gzip,
        config::Compression::Snappy => produce::Compression::Snappy,
        config::Compression::Lz4 => produce::Compression::Lz4,
        config::Compression::Zstd => produce::Compression::Zstd,
    }
}

/// Streams the demo workload into the topic at `rate` events per second until stopped.
fn spawn_demo(
    kafka: &KafkaSettings,
    topic: &str,
    rate: f64,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let kafka = kafka.clone();
    let topic = topic.to_owned();
    let stop = Arc::clone(stop);
    let mut spec = produce::WorkloadSpec::demo(DEMO_CLIENT);
    spec.clock = produce::Clock::starting_now(rate);
    let workload = produce::Workload::new(spec);
    thread::Builder::new()
        .name("demo-producer".into())
        .spawn(move || {
            info!(rate, "demo: streaming permit events");
            if let Err(e) = produce::stream(&kafka, &topic, workload, rate, None, None, &stop) {
                error!("demo producer stopped: {e:#}");
            }
        })
        .context("cannot start the demo producer")
}

/// `scheme`: `https` with --tls-cert (a certificate curl does not trust needs its `--cacert`).
fn print_demo_curl(addr: SocketAddr, token: &str, scheme: &str) {
    let host = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    println!(
        "\nDemo ready. Ask for the permit stats of {DEMO_CLIENT} (paste this):\n\n\
         curl -sS -X POST '{scheme}://{host}/api/{DEMO_CLIENT}/v1/permits/stats' \\\n  \
         -H 'Content-Type: application/json' -H 'Accept: application/json' \\\n  \
         -d '{{\"apiToken\":\"{token}\",\"zones\":\"Lot 01,Lot 02\"}}'\n\n\
         Every zone: drop \"zones\". Metrics: curl -sS {scheme}://{host}/metrics\n"
    );
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `permit-stats produce`: creates the topic if asked, writes `--events` records of the workload
/// and prints a one-line summary to stderr. Blocking: call it outside async code or from
/// `spawn_blocking`.
pub(crate) fn produce(args: &ProduceArgs) -> anyhow::Result<()> {
    let spec = workload_spec(args);
    spec.validate().context("invalid workload")?;
    let kafka = kafka_settings(args.brokers.as_deref(), &args.kafka)?;
    kafka.require_bootstrap()?;
    if let Some(partitions) = args.create_partitions {
        produce::create_topic(&kafka, &args.topic, partitions)?;
    }
    let stop = AtomicBool::new(false);
    let summary = produce::stream(
        &kafka,
        &args.topic,
        produce::Workload::new(spec),
        args.rate,
        Some(args.events),
        args.compression.map(compression),
        &stop,
    )?;
    eprintln!("{summary}");
    if let Some(error) = summary.first_failure {
        bail!(
            "{} records were not delivered to {}; the first because: {error}",
            summary.failed,
            args.topic
        );
    }
    Ok(())
}

/// The workload `produce`'s flags describe.
fn workload_spec(args: &ProduceArgs) -> produce::WorkloadSpec {
    produce::WorkloadSpec {
        permits: args.permits,
        zones: args.zones,
        clients: args.clients.iter().map(|c| c.trim().to_owned()).collect(),
        seed: args.seed,
        duplicates: args.duplicates,
        bad_records: args.bad_records,
        format: match args.format {
            ValueFormat::Protobuf => produce::Format::Protobuf,
            ValueFormat::Json => produce::Format::Json,
            ValueFormat::Mixed => produce::Format::Mixed,
        },
        clock: produce::Clock::default(),
    }
}

/// Prints a new token alone on the first line, then the token-file entry for it.
pub(crate) fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let token = auth::generate();
    let entry = auth::entry_for(&token, &args.client, &args.name)
        .context("cannot write the token-file entry")?;
    println!("{token}");
    println!();
    println!(
        "# add to the token file; the token itself is printed above, once, and stored nowhere"
    );
    print!("{entry}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::{Cli, Command};

    /// `permit-stats serve --demo` with `extra` flags.
    fn serve_args(extra: &[&str]) -> Result<ServeArgs, clap::error::ErrorKind> {
        let argv = ["permit-stats", "serve", "--demo"].iter().chain(extra);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Serve(args)) => Ok(args),
            Ok(_) => panic!("parsed another subcommand"),
            Err(e) => Err(e.kind()),
        }
    }

    #[test]
    fn the_command_lines_defaults_are_the_parts_own() {
        let args = serve_args(&[]).expect("valid");
        assert_eq!(limits(&args), api::Limits::default());
        assert_eq!(metadata_every(&args), ingest::DEFAULT_METADATA_EVERY);
    }

    #[test]
    fn limits_come_from_the_command_line_with_sane_defaults() {
        let limits = |extra: &[&str]| serve_args(extra).map(|args| limits(&args));
        let defaults = limits(&[]).expect("valid");
        assert_eq!(defaults, api::Limits::default());
        assert_eq!(defaults.rate_limit, None, "rate limiting is off by default");

        let set = limits(&[
            "--header-read-timeout",
            "3",
            "--body-read-timeout",
            "4",
            "--max-connections",
            "50",
            "--rate-limit",
            "50/s",
            "--rate-limit-burst",
            "10",
        ])
        .expect("valid");
        assert_eq!(set.header_read_timeout, Duration::from_secs(3));
        assert_eq!(set.body_read_timeout, Duration::from_secs(4));
        assert_eq!(set.max_connections, 50);
        let rate = set.rate_limit.expect("a rate limit");
        assert_eq!((rate.requests.get(), rate.burst.get()), (50, 10));
        assert_eq!(rate.period, Duration::from_secs(1));
        let rate = limits(&["--rate-limit", "3000/min"])
            .expect("valid")
            .rate_limit
            .expect("a rate limit");
        assert_eq!(
            (rate.requests.get(), rate.period, rate.burst.get()),
            (3000, Duration::from_secs(60), 3000),
            "the burst defaults to one period's worth"
        );

        assert!(limits(&["--rate-limit", "fast"]).is_err());
        assert!(limits(&["--max-connections", "0"]).is_err());
        assert!(limits(&["--header-read-timeout", "0"]).is_err());
        assert!(
            limits(&["--rate-limit-burst", "5"]).is_err(),
            "a burst needs a rate"
        );
    }

    #[test]
    fn produce_flags_become_the_workload_they_describe() {
        let cli = Cli::try_parse_from([
            "permit-stats",
            "produce",
            "--brokers",
            "b",
            "--clients",
            "OC-TOMA, OC-DEMO",
            "--format",
            "mixed",
        ])
        .expect("valid flags");
        let Command::Produce(args) = cli.command else {
            panic!("parsed another subcommand");
        };
        let spec = workload_spec(&args);
        assert_eq!(spec.clients, ["OC-TOMA", "OC-DEMO"]);
        assert_eq!(spec.format, produce::Format::Mixed);
        assert_eq!(
            produce::WorkloadSpec {
                clients: spec.clients.clone(),
                format: produce::Format::Protobuf,
                ..spec.clone()
            },
            produce::WorkloadSpec {
                clients: spec.clients.clone(),
                ..produce::WorkloadSpec::default()
            },
            "the flags' defaults are the workload's defaults"
        );
    }
}
