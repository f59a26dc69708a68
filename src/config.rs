//! The command line: one binary, a few subcommands, every flag also read from an environment
//! variable `PERMIT_STATS_<FLAG>` (spec/operations.md). Tests parse with `try_parse_from`.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::produce::ProduceArgs;

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
}

/// How log lines look.
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
    /// Kafka bootstrap servers (host:port,...); without it, an embedded broker is started.
    #[arg(long, env = "PERMIT_STATS_BROKERS")]
    pub brokers: Option<String>,

    /// The topic of the permit events.
    #[arg(long, env = "PERMIT_STATS_TOPIC", default_value = DEFAULT_TOPIC)]
    pub topic: String,

    /// Address the HTTP API listens on.
    #[arg(long, env = "PERMIT_STATS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

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
          default_value_t = crate::api::DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout: u64,

    /// Seconds a client has to send a request's body once its head has arrived (408 after).
    #[arg(long, env = "PERMIT_STATS_BODY_READ_TIMEOUT",
          default_value_t = crate::api::DEFAULT_BODY_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout: u64,

    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "PERMIT_STATS_MAX_CONNECTIONS",
          default_value_t = crate::api::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// Per-token rate limit of the stats request, e.g. `50/s`, `3000/min` (off when absent);
    /// excess requests get 429 with `Retry-After`.
    #[arg(long, env = "PERMIT_STATS_RATE_LIMIT")]
    pub rate_limit: Option<crate::api::RateLimit>,

    /// Requests a token may send at once under --rate-limit (default: one period's worth).
    #[arg(long, env = "PERMIT_STATS_RATE_LIMIT_BURST", requires = "rate_limit")]
    pub rate_limit_burst: Option<std::num::NonZeroU32>,

    /// Seconds between checks of the token file for changes (0: reload on SIGHUP only).
    #[arg(long, env = "PERMIT_STATS_TOKENS_POLL_INTERVAL", default_value_t = 1)]
    pub tokens_poll_interval: u64,

    /// Topic that bad records are copied to, with their reason, source topic, partition and
    /// offset in headers (none: they are only counted and logged).
    #[arg(long, env = "PERMIT_STATS_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Seconds between reads of the topic's metadata, which pick up added partitions.
    #[arg(long, env = "PERMIT_STATS_METADATA_INTERVAL",
          default_value_t = crate::ingest::DEFAULT_METADATA_EVERY.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metadata_interval: u64,
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
}
