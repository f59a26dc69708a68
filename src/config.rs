//! The command line: one binary, a few subcommands, every flag also read from an environment
//! variable `PERMIT_STATS_<FLAG>` (spec/operations.md). Tests parse with `try_parse_from`.
//!
//! Only the command line lives here: its syntax (`--rate-limit 50/s`) and its defaults. app turns
//! the parsed flags into each part's own configuration (`api::Limits`, ingest's settings, the
//! log format), and its tests check that these defaults are the parts' own.

use std::{
    fmt,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default topic of the permit events.
pub const DEFAULT_TOPIC: &str = "opscom.permits.v1";

/// permit-stats: the OPS-COM "Permit Stats" request, answered from a projection of the permit
/// events on Kafka.
#[derive(Debug, Parser)]
#[command(name = "permit-stats", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "PERMIT_STATS_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the consumer and the HTTP API.
    Serve(ServeArgs),
    /// Write a deterministic permit-event workload to a Kafka topic.
    Produce(ProduceArgs),
    /// Issue a new API token for a client and print its token-file entry.
    Token(TokenArgs),
    /// Catch up with the topic (from the newest checkpoint), write one checkpoint, exit.
    Checkpoint(CheckpointArgs),
    /// Print the stats of one client as they stood at a given time, rebuilt from the topic.
    Replay(ReplayArgs),
}

/// `--log-format`: how log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `permit-stats serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Kafka bootstrap servers (host:port,...); without it (and without a bootstrap.servers in
    /// --kafka-option or --kafka-config), an embedded broker is started.
    #[arg(long, env = "PERMIT_STATS_BROKERS")]
    pub brokers: Option<String>,

    /// librdkafka client settings (SASL, TLS, tuning).
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The topic of the permit events.
    #[arg(long, env = "PERMIT_STATS_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,

    /// Address the HTTP API listens on.
    #[arg(long, env = "PERMIT_STATS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain (server certificate first): serve the API over HTTPS instead of
    /// HTTP; needs --tls-key. Reloaded on SIGHUP and on change.
    #[arg(long, env = "PERMIT_STATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS #8, PKCS #1 or SEC1); needs --tls-cert.
    #[arg(long, env = "PERMIT_STATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds between checks of the --tls-cert and --tls-key files for changes (0: reload on
    /// SIGHUP only).
    #[arg(long, env = "PERMIT_STATS_TLS_POLL_INTERVAL", default_value_t = 1)]
    pub tls_poll_interval: u64,

    /// The token file (TOML, SHA-256 digests); required unless --demo.
    #[arg(long, env = "PERMIT_STATS_TOKENS", required_unless_present = "demo")]
    pub tokens: Option<PathBuf>,

    /// Stream realistic permit events into the topic and print a ready-to-paste curl with a demo
    /// token.
    #[arg(long, env = "PERMIT_STATS_DEMO")]
    pub demo: bool,

    /// Events per second the demo writes.
    #[arg(long, env = "PERMIT_STATS_DEMO_RATE", default_value_t = 20.0)]
    pub demo_rate: f64,

    /// Partitions of the topic in the embedded broker.
    #[arg(long, env = "PERMIT_STATS_EMBEDDED_PARTITIONS", default_value_t = 3)]
    pub embedded_partitions: i32,

    /// Seconds that in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "PERMIT_STATS_SHUTDOWN_GRACE", default_value_t = 5)]
    pub shutdown_grace: u64,

    /// Seconds a client has to send a request's head (request line and headers); also how long
    /// an idle keep-alive connection stays open.
    #[arg(long, env = "PERMIT_STATS_HEADER_READ_TIMEOUT",
          default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,

    /// Seconds a client has to send a request's body once its head has arrived (408 after).
    #[arg(long, env = "PERMIT_STATS_BODY_READ_TIMEOUT",
          default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout: u64,

    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "PERMIT_STATS_MAX_CONNECTIONS",
          default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Threads that serve HTTP, each with its own listening socket on the port (SO_REUSEPORT)
    /// and its own single-threaded runtime (default: the number of cores).
    #[arg(long, env = "PERMIT_STATS_HTTP_WORKERS")]
    pub http_workers: Option<NonZeroUsize>,

    /// Per-token rate limit of the stats request, e.g. `50/s`, `3000/min` (off when absent);
    /// excess requests get 429 with `Retry-After`.
    #[arg(long, env = "PERMIT_STATS_RATE_LIMIT")]
    pub rate_limit: Option<RateLimit>,

    /// Requests a token may send at once under --rate-limit (default: one period's worth).
    #[arg(long, env = "PERMIT_STATS_RATE_LIMIT_BURST", requires = "rate_limit")]
    pub rate_limit_burst: Option<NonZeroU32>,

    /// Seconds between checks of the token file for changes (0: reload on SIGHUP only).
    #[arg(long, env = "PERMIT_STATS_TOKENS_POLL_INTERVAL", default_value_t = 1)]
    pub tokens_poll_interval: u64,

    /// Topic that bad records are copied to, with their reason, source topic, partition and
    /// offset in headers (none: they are only counted and logged).
    #[arg(long, env = "PERMIT_STATS_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Seconds between reads of the topic's metadata, which pick up added partitions.
    #[arg(long, env = "PERMIT_STATS_METADATA_INTERVAL",
          default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metadata_interval: u64,

    /// Where checkpoints are written and read: a directory, file:///..., s3://bucket/prefix,
    /// gs://..., az://... (none: every start replays the whole topic)
    #[arg(long, env = "PERMIT_STATS_CHECKPOINT_STORE")]
    pub checkpoint_store: Option<String>,

    /// Seconds between checkpoints (each written only if something changed)
    #[arg(long, env = "PERMIT_STATS_CHECKPOINT_INTERVAL",
          default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval: u64,

    /// How many checkpoints to keep
    #[arg(long, env = "PERMIT_STATS_CHECKPOINT_KEEP",
          default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_keep: u64,

    /// Serve even when records the state never saw were deleted by the topic; every answer then
    /// carries X-Stats-History-Missing
    #[arg(long, env = "PERMIT_STATS_ALLOW_MISSING_HISTORY")]
    pub allow_missing_history: bool,
}

/// The cluster and topic of `checkpoint` and `replay` (no embedded broker for them).
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Kafka bootstrap servers (or bootstrap.servers in --kafka-option or --kafka-config)
    #[arg(long, env = "PERMIT_STATS_BROKERS")]
    pub brokers: Option<String>,

    /// librdkafka client settings (SASL, TLS, tuning)
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The topic of the permit events
    #[arg(long, env = "PERMIT_STATS_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,
}

/// `permit-stats checkpoint`: catch up, write one checkpoint, exit.
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// The cluster and topic.
    #[command(flatten)]
    pub source: TopicArgs,

    /// Where checkpoints are written and read (as for serve)
    #[arg(long, env = "PERMIT_STATS_CHECKPOINT_STORE")]
    pub checkpoint_store: String,

    /// How many checkpoints to keep
    #[arg(long, env = "PERMIT_STATS_CHECKPOINT_KEEP",
          default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_keep: u64,

    /// Write one even when records the state never saw were deleted by the topic (the
    /// checkpoint carries their count)
    #[arg(long, env = "PERMIT_STATS_ALLOW_MISSING_HISTORY")]
    pub allow_missing_history: bool,
}

/// `permit-stats replay --until`: the stats as they stood at a time.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The cluster and topic.
    #[command(flatten)]
    pub source: TopicArgs,

    /// RFC 3339 time (e.g. 2026-11-30T17:00:00Z): the records written up to it are applied, and
    /// none after
    #[arg(long, value_parser = parse_time)]
    pub until: time::OffsetDateTime,

    /// The client code
    #[arg(long)]
    pub client: String,

    /// Comma-separated zone names, as in the stats request (default: every zone)
    #[arg(long)]
    pub zones: Option<String>,

    /// How to print the stats: json (byte for byte the stats request's body), csv or table
    #[arg(long, value_enum, default_value_t = ReplayFormat::Json)]
    pub format: ReplayFormat,

    /// Start from the newest checkpoint there that covers no record after --until
    #[arg(long, env = "PERMIT_STATS_CHECKPOINT_STORE")]
    pub checkpoint_store: Option<String>,

    /// Print the stats even when records before --until were deleted by the topic
    #[arg(long, env = "PERMIT_STATS_ALLOW_MISSING_HISTORY")]
    pub allow_missing_history: bool,
}

/// `replay --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    /// The stats request's body.
    Json,
    /// `type,zone,total` rows with a header line.
    Csv,
    /// Aligned columns, for a terminal.
    Table,
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time (e.g. 2026-11-30T17:00:00Z): {e}"))
}

/// `--rate-limit`: `requests` per `period`, written `50/s`, `3000/min` or `100000/h` (also `/sec`,
/// `/m`, `/hour`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per period, 1 to 1,000,000.
    pub requests: NonZeroU32,
    /// A second, a minute or an hour.
    pub period: Duration,
}

/// Why a `--rate-limit` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// Not `<count>/<unit>`.
    #[error("expected <count>/<unit>, e.g. 50/s, 3000/min or 100000/h")]
    Shape,
    /// The count is not a whole number from 1 to 1,000,000.
    #[error("the count must be a whole number from 1 to 1000000")]
    Count,
    /// The unit is not seconds, minutes or hours.
    #[error("the unit must be s, min or h")]
    Unit,
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, unit) = s.trim().split_once('/').ok_or(RateLimitError::Shape)?;
        let requests: NonZeroU32 = count
            .trim()
            .parse()
            .ok()
            .filter(|n: &NonZeroU32| n.get() <= 1_000_000)
            .ok_or(RateLimitError::Count)?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(RateLimitError::Unit),
        };
        Ok(Self { requests, period })
    }
}

/// The flag's own syntax: `50/s`, `3000/min`, `1/h`.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            60 => "min",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.requests)
    }
}

/// `permit-stats produce`: write a deterministic stream of permit events to a Kafka topic.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers, `host:port[,host:port...]` (or bootstrap.servers in
    /// --kafka-option or --kafka-config)
    #[arg(long, env = "PERMIT_STATS_BROKERS")]
    pub brokers: Option<String>,

    /// librdkafka client settings (SASL, TLS, tuning)
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Compression of the record batches written (default: none, or the compression.type of
    /// --kafka-option or --kafka-config)
    #[arg(long, env = "PERMIT_STATS_COMPRESSION", value_enum)]
    pub compression: Option<Compression>,

    /// Topic to write the permit events to
    #[arg(long, env = "PERMIT_STATS_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,

    /// Total number of records to write (duplicates and bad records included)
    #[arg(long, env = "PERMIT_STATS_EVENTS", default_value_t = 10_000)]
    pub events: u64,

    /// Number of distinct permits live at most at any time
    #[arg(long, env = "PERMIT_STATS_PERMITS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub permits: u32,

    /// Number of zones (`Lot 01`, `Lot 02`, ...)
    #[arg(long, env = "PERMIT_STATS_ZONES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub zones: u32,

    /// Client codes the permits are spread over, comma-separated
    #[arg(
        long,
        env = "PERMIT_STATS_CLIENTS",
        value_delimiter = ',',
        default_value = "OC-TOMA"
    )]
    pub clients: Vec<String>,

    /// Seed of the generator: the same seed writes the same records, byte for byte
    #[arg(long, env = "PERMIT_STATS_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Records per second; 0 writes as fast as the broker takes them
    #[arg(long, env = "PERMIT_STATS_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Encoding of the record values
    #[arg(long, env = "PERMIT_STATS_FORMAT", value_enum, default_value_t = ValueFormat::Protobuf)]
    pub format: ValueFormat,

    /// Fraction of records that re-send the previous event as an exact duplicate (0 to 1)
    #[arg(long, env = "PERMIT_STATS_DUPLICATES", default_value_t = 0.0, value_parser = parse_fraction)]
    pub duplicates: f64,

    /// Fraction of records that are garbage the service must reject (0 to 1)
    #[arg(long, env = "PERMIT_STATS_BAD_RECORDS", default_value_t = 0.0, value_parser = parse_fraction)]
    pub bad_records: f64,

    /// Create the topic with this many partitions first, unless it already exists
    #[arg(long, env = "PERMIT_STATS_CREATE_PARTITIONS",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub create_partitions: Option<i32>,
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("expected a number from 0 to 1".to_owned()),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err("expected a number of records per second, 0 or more".to_owned()),
    }
}

/// `produce --format`: how record values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueFormat {
    /// Every value is protobuf (`application/x-protobuf`).
    Protobuf,
    /// Every value is canonical proto3 JSON (`application/json`).
    Json,
    /// Each value is protobuf or JSON, about half each.
    Mixed,
}

/// The librdkafka settings every Kafka client of the binary takes (spec/operations.md,
/// "Connecting to a real cluster"). Their values are never shown in `--help`: they may hold
/// secrets.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaArgs {
    /// A librdkafka client setting, KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL;
    /// wins over --kafka-config. The variable holds several: one per line when it holds a
    /// newline, else comma-separated; the flag, when given, replaces it.
    /// [env: PERMIT_STATS_KAFKA_OPTIONS]
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_option: Vec<String>,

    /// The `PERMIT_STATS_KAFKA_OPTIONS` environment variable (see --kafka-option).
    #[arg(
        long = "kafka-options-env",
        env = "PERMIT_STATS_KAFKA_OPTIONS",
        hide = true,
        hide_env_values = true
    )]
    pub kafka_options_env: Option<String>,

    /// A file of librdkafka client settings in Java `client.properties` syntax (`key=value`
    /// lines, `#` comments).
    #[arg(
        long = "kafka-config",
        env = "PERMIT_STATS_KAFKA_CONFIG",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub kafka_config: Option<PathBuf>,
}

impl KafkaArgs {
    /// The `KEY=VALUE` entries: the flags, or else the environment variable split by newlines
    /// (when it holds one) or commas. Blank entries are dropped.
    pub fn options(&self) -> Vec<String> {
        if !self.kafka_option.is_empty() {
            return self.kafka_option.clone();
        }
        let Some(text) = &self.kafka_options_env else {
            return Vec::new();
        };
        let separator = if text.contains('\n') { '\n' } else { ',' };
        text.split(separator)
            .map(|entry| entry.trim_end_matches('\r').trim())
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `produce --compression`: the codec of the record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// `permit-stats token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The client code the token may read.
    #[arg(long, env = "PERMIT_STATS_CLIENT")]
    pub client: String,

    /// A name for humans and logs, e.g. the integration that uses it.
    #[arg(long, env = "PERMIT_STATS_NAME")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_defaults_match_the_operations_spec() {
        let cli = Cli::try_parse_from(["permit-stats", "serve", "--tokens", "t.toml"])
            .expect("valid command line");
        let Command::Serve(args) = cli.command else {
            panic!("parsed another subcommand");
        };
        assert_eq!(args.topic, "opscom.permits.v1");
        assert_eq!(args.listen, "127.0.0.1:8080".parse().expect("address"));
        assert_eq!(args.brokers, None);
        assert!(!args.demo);
        // spec/operations.md, "History".
        assert_eq!(args.checkpoint_store, None);
        assert_eq!((args.checkpoint_interval, args.checkpoint_keep), (60, 3));
        assert!(!args.allow_missing_history);
    }

    #[test]
    fn replay_takes_an_rfc_3339_time_and_prints_json_by_default() {
        let argv = [
            "permit-stats",
            "replay",
            "--until",
            "2026-11-30T17:00:00+01:00",
            "--client",
            "OC-TOMA",
        ];
        let Ok(Command::Replay(args)) = Cli::try_parse_from(argv).map(|cli| cli.command) else {
            panic!("parses as replay");
        };
        assert_eq!(args.until.unix_timestamp(), 1_796_054_400);
        assert_eq!(args.format, ReplayFormat::Json);
        let mut bad = argv;
        bad[3] = "yesterday";
        assert!(Cli::try_parse_from(bad).is_err());
    }

    #[test]
    fn serve_needs_tokens_unless_demo() {
        assert!(Cli::try_parse_from(["permit-stats", "serve"]).is_err());
        assert!(Cli::try_parse_from(["permit-stats", "serve", "--demo"]).is_ok());
    }

    #[test]
    fn dead_letter_topic_is_off_and_metadata_is_reread_every_10_s_by_default() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["permit-stats", "serve", "--demo"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Serve(args)) => Ok(args),
                Ok(_) => panic!("parsed another subcommand"),
                Err(e) => Err(e),
            }
        };
        let args = parse(&[]).expect("valid");
        assert_eq!(args.dead_letter_topic, None);
        assert_eq!(args.metadata_interval, 10);
        let args =
            parse(&["--dead-letter-topic", "bad", "--metadata-interval", "1"]).expect("valid");
        assert_eq!(args.dead_letter_topic.as_deref(), Some("bad"));
        assert_eq!(args.metadata_interval, 1);
        assert!(parse(&["--metadata-interval", "0"]).is_err());
    }

    #[test]
    fn kafka_options_come_from_flags_or_the_environment_variable() {
        let args = |flags: &[&str], env: Option<&str>| KafkaArgs {
            kafka_option: flags.iter().map(|s| (*s).to_owned()).collect(),
            kafka_options_env: env.map(str::to_owned),
            kafka_config: None,
        };
        assert_eq!(
            args(&[], Some("a=1, b=2,,")).options(),
            ["a=1", "b=2"],
            "commas without a newline"
        );
        assert_eq!(
            args(&[], Some("bootstrap.servers=x:1,y:2\r\nsasl.username=u\n")).options(),
            ["bootstrap.servers=x:1,y:2", "sasl.username=u"],
            "newlines, and then commas are part of the values"
        );
        assert_eq!(
            args(&["c=3"], Some("a=1")).options(),
            ["c=3"],
            "the flag wins"
        );
        let cli = Cli::try_parse_from([
            "permit-stats",
            "serve",
            "--demo",
            "--kafka-option",
            "security.protocol=SSL",
            "--kafka-option",
            "ssl.ca.location=/ca.pem",
            "--kafka-config",
            "client.properties",
        ])
        .expect("valid");
        let Command::Serve(serve) = cli.command else {
            panic!("parsed another subcommand");
        };
        assert_eq!(
            serve.kafka.kafka_option,
            ["security.protocol=SSL", "ssl.ca.location=/ca.pem"]
        );
        assert_eq!(
            serve.kafka.kafka_config.as_deref(),
            Some(std::path::Path::new("client.properties"))
        );
    }

    #[test]
    fn tls_needs_both_the_certificate_and_the_key() {
        let parse = |extra: &[&str]| {
            let argv = ["permit-stats", "serve", "--demo"].iter().chain(extra);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Serve(args)) => Ok(args),
                Ok(_) => panic!("parsed another subcommand"),
                Err(e) => Err(e),
            }
        };
        let plain = parse(&[]).expect("valid");
        assert_eq!(
            (plain.tls_cert, plain.tls_key),
            (None, None),
            "HTTP by default"
        );
        assert_eq!(plain.tls_poll_interval, 1);
        let both = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).expect("valid");
        assert_eq!(both.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(both.tls_key, Some(PathBuf::from("k.pem")));
        for alone in [["--tls-cert", "c.pem"], ["--tls-key", "k.pem"]] {
            let e = parse(&alone).expect_err("one without the other");
            assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
            let other = if alone[0] == "--tls-cert" {
                "--tls-key"
            } else {
                "--tls-cert"
            };
            assert!(e.to_string().contains(other), "{e}");
        }
    }

    #[test]
    fn rate_limits_parse_per_second_minute_or_hour() {
        let limit: RateLimit = "50/s".parse().expect("valid");
        assert_eq!(limit.requests.get(), 50);
        assert_eq!(limit.period, Duration::from_secs(1));
        assert_eq!(limit.to_string(), "50/s");
        assert_eq!(
            " 3000 / min ".parse::<RateLimit>().map(|l| l.period),
            Ok(Duration::from_secs(60))
        );
        assert_eq!("1/h".parse::<RateLimit>().map(|l| l.requests.get()), Ok(1));
        assert_eq!(
            "1/hour".parse::<RateLimit>().map(|l| l.to_string()),
            Ok("1/h".into())
        );
        assert_eq!("50".parse::<RateLimit>(), Err(RateLimitError::Shape));
        assert_eq!("0/s".parse::<RateLimit>(), Err(RateLimitError::Count));
        assert_eq!("-5/s".parse::<RateLimit>(), Err(RateLimitError::Count));
        assert_eq!("2000000/s".parse::<RateLimit>(), Err(RateLimitError::Count));
        assert_eq!("5/day".parse::<RateLimit>(), Err(RateLimitError::Unit));
    }

    #[test]
    fn produce_flags_parse_with_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProduceArgs,
        }
        let cli = Cli::try_parse_from([
            "produce",
            "--brokers",
            "localhost:9092",
            "--clients",
            "OC-TOMA,OC-DEMO",
            "--format",
            "mixed",
            "--bad-records",
            "0.05",
        ])
        .expect("valid flags");
        assert_eq!(cli.args.clients, ["OC-TOMA", "OC-DEMO"]);
        assert_eq!(cli.args.format, ValueFormat::Mixed);
        assert_eq!(cli.args.events, 10_000);
        assert!(Cli::try_parse_from(["produce", "--brokers", "b", "--duplicates", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["produce", "--brokers", "b", "--rate", "-1"]).is_err());
    }
}
