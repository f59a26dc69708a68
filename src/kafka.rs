//! Kafka client settings: what every Kafka client of the binary (the ingest consumer, the
//! dead-letter producer and its scan, the admin and metadata calls, `produce` and `--demo`)
//! takes from the user, so that it can reach a real cluster (SASL, TLS, mutual TLS, tuning).
//!
//! Built once by the wiring from `--brokers`, `--kafka-config <file>` (Java `client.properties`
//! syntax, read by [`parse_properties`]) and `--kafka-option KEY=VALUE`; each stage then asks
//! [`KafkaSettings::client_config`] for a librdkafka configuration with its own defaults under
//! the user's settings. The rules (spec/operations.md, "Connecting to a real cluster"):
//!
//! - `--kafka-option` wins over the file; `--brokers` wins over a `bootstrap.servers` in either,
//!   which, alone, counts as `--brokers` (so no embedded broker is started then).
//! - Settings the service owns ([`OWNED`]) are refused, with an error naming them: changing them
//!   would make the counts wrong (offsets, groups, aborted transactions) or blind the lag.
//! - Secrets ([`is_secret`]) are never printed: [`KafkaSettings`]' `Debug` and `Display` show
//!   `<redacted>` for their values, and [`KafkaSettings::redact`] and [`KafkaSettings::scrub`]
//!   take them out of librdkafka's errors, which echo a refused value
//!   (`Client config error: <description> <key> <value>`).
//!
//! The refusal of a cluster (wrong credentials, an untrusted certificate, a client certificate
//! the broker rejects) reaches the service only through librdkafka's error callback;
//! [`Refusal::classify`] tells those apart from a broker that is merely down.

pub mod retention;

use std::{collections::BTreeMap, fmt, fs, path::Path};

use rdkafka::{ClientConfig, error::KafkaError, error::RDKafkaErrorCode};

mod marks;
pub mod offsets;

pub use marks::{PartitionMark, RecordMark};

/// The librdkafka key of the bootstrap servers (`metadata.broker.list` is its alias).
const BOOTSTRAP: &str = "bootstrap.servers";

/// What a secret value is shown as.
pub const REDACTED: &str = "<redacted>";

/// Settings the service owns, and why; a user's value for any of them is refused at start.
/// `isolation.level` is owned only as `read_uncommitted`: `read_committed` is librdkafka's
/// default and what the service reads with.
pub const OWNED: [(&str, &str); 7] = [
    (
        "group.id",
        "the service reads without a consumer group (every replica reads every partition)",
    ),
    (
        "enable.auto.commit",
        "the service never commits offsets: each start replays the topic (from its checkpoint)",
    ),
    (
        "auto.commit.enable",
        "the service never commits offsets: each start replays the topic (from its checkpoint)",
    ),
    (
        "enable.auto.offset.store",
        "the service never stores offsets: each start replays the topic (from its checkpoint)",
    ),
    (
        "auto.offset.reset",
        "the service reads every partition from the beginning or its checkpoint's offsets",
    ),
    (
        "isolation.level",
        "read_uncommitted would count records of aborted transactions",
    ),
    (
        "statistics.interval.ms",
        "the lag is measured from the consumer's statistics every second",
    ),
];

/// Why the Kafka settings were refused. No message carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSettingsError {
    /// The `--kafka-config` file could not be read.
    #[error("cannot read the Kafka client settings file {path}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's refusal.
        source: std::io::Error,
    },
    /// A line of the file is not a property.
    #[error("{path}, line {line}: {problem}")]
    Syntax {
        /// The file.
        path: String,
        /// The natural line (1-based) where the property starts.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A `--kafka-option` is not `KEY=VALUE`. The entry itself is not shown: it may be part of
    /// a secret (a password with a comma, split by the comma-separated form).
    #[error(
        "Kafka option number {number} is not KEY=VALUE (not shown: it may be part of a secret; \
         a value holding commas needs the newline-separated form of PERMIT_STATS_KAFKA_OPTIONS)"
    )]
    Option {
        /// Its position among the options, from 1.
        number: usize,
    },
    /// Settings the service owns were given.
    #[error(
        "these Kafka settings belong to the service and cannot be set: {}",
        .0.iter().map(|(k, why)| format!("{k} ({why})")).collect::<Vec<_>>().join("; ")
    )]
    Owned(Vec<(String, &'static str)>),
    /// `sasl.jaas.config` is Java's; librdkafka has its own keys.
    #[error(
        "sasl.jaas.config is a Java client setting that librdkafka does not read: give \
         sasl.username and sasl.password instead (with sasl.mechanism)"
    )]
    JavaJaas,
    /// No bootstrap servers anywhere, where they are required.
    #[error(
        "no Kafka bootstrap servers: give --brokers, or bootstrap.servers in --kafka-option or --kafka-config"
    )]
    NoBrokers,
}

/// The user's Kafka client settings (secrets redacted when shown).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `--brokers`, or else the `bootstrap.servers` of the options or the file.
    bootstrap: Option<String>,
    /// Every other setting, by key.
    options: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// Just bootstrap servers, as without any of the new flags.
    pub fn plain(bootstrap: &str) -> Self {
        Self {
            bootstrap: Some(bootstrap.to_owned()),
            options: BTreeMap::new(),
        }
    }

    /// The settings from their three sources: `brokers` (`--brokers`), `file`
    /// (`--kafka-config`) and `options` (`--kafka-option`, each `KEY=VALUE`), with the
    /// precedence of the module doc; owned settings and Java's `sasl.jaas.config` are refused.
    pub fn load(
        brokers: Option<&str>,
        file: Option<&Path>,
        options: &[String],
    ) -> Result<Self, KafkaSettingsError> {
        let mut merged = BTreeMap::new();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let bytes = fs::read(path).map_err(|source| KafkaSettingsError::Read {
                path: shown.clone(),
                source,
            })?;
            let properties = parse_properties(&decode(&bytes)).map_err(|(line, problem)| {
                KafkaSettingsError::Syntax {
                    path: shown,
                    line,
                    problem,
                }
            })?;
            merged.extend(properties.into_iter().map(|(k, v)| (normalize(&k), v)));
        }
        for (index, option) in options.iter().enumerate() {
            let refused = KafkaSettingsError::Option { number: index + 1 };
            let Some((key, value)) = option.split_once('=') else {
                return Err(refused);
            };
            let key = normalize(key.trim());
            if key.is_empty() {
                return Err(refused);
            }
            merged.insert(key, value.trim().to_owned());
        }
        let owned: Vec<(String, &'static str)> = merged
            .iter()
            .filter_map(|(key, value)| {
                let (_, why) = OWNED.iter().find(|(owned, _)| owned == key)?;
                let allowed = key == "isolation.level" && value == "read_committed";
                (!allowed).then(|| (key.clone(), *why))
            })
            .collect();
        if !owned.is_empty() {
            return Err(KafkaSettingsError::Owned(owned));
        }
        if merged.contains_key("sasl.jaas.config") {
            return Err(KafkaSettingsError::JavaJaas);
        }
        let from_options = merged.remove(BOOTSTRAP).filter(|b| !b.trim().is_empty());
        let bootstrap = brokers
            .map(str::to_owned)
            .filter(|b| !b.trim().is_empty())
            .or(from_options);
        Ok(Self {
            bootstrap,
            options: merged,
        })
    }

    /// The bootstrap servers, if any source gave them.
    pub fn bootstrap(&self) -> Option<&str> {
        self.bootstrap.as_deref()
    }

    /// The bootstrap servers, or the error that says where to give them.
    pub fn require_bootstrap(&self) -> Result<&str, KafkaSettingsError> {
        self.bootstrap().ok_or(KafkaSettingsError::NoBrokers)
    }

    /// The same settings with these bootstrap servers (the embedded broker's).
    #[must_use]
    pub fn with_bootstrap(mut self, bootstrap: &str) -> Self {
        self.bootstrap = Some(bootstrap.to_owned());
        self
    }

    /// True when the user gave settings beyond the bootstrap servers.
    pub fn has_options(&self) -> bool {
        !self.options.is_empty()
    }

    /// A client configuration: the stage's `defaults`, then the user's settings over them, then
    /// the bootstrap servers. A stage sets what it owns ([`OWNED`]) after this.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        if let Some(bootstrap) = &self.bootstrap {
            config.set(BOOTSTRAP, bootstrap);
        }
        config
    }

    /// `error` with any secret taken out: the refused value of a secret key, and every secret
    /// value of these settings wherever it appears in the text.
    pub fn redact(&self, error: KafkaError) -> KafkaError {
        match error {
            KafkaError::ClientConfig(code, description, key, value) => {
                let value = if is_secret(&key) {
                    REDACTED.to_owned()
                } else {
                    self.scrub(&value)
                };
                KafkaError::ClientConfig(code, self.scrub(&description), key, value)
            }
            KafkaError::ClientCreation(text) => KafkaError::ClientCreation(self.scrub(&text)),
            other => other,
        }
    }

    /// `text` with every secret value of these settings replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (key, value) in &self.options {
            if is_secret(key) && !value.is_empty() {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }
}

/// `key = value, ...` with secret values redacted; the bootstrap servers first.
impl fmt::Display for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{BOOTSTRAP}={}",
            self.bootstrap.as_deref().unwrap_or("(none)")
        )?;
        for (key, value) in &self.options {
            let shown = if is_secret(key) { REDACTED } else { value };
            write!(f, ", {key}={shown}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaSettings({self})")
    }
}

/// True for a key whose value must never be shown: passwords, secrets, private keys, JAAS and
/// OAUTHBEARER configurations, tokens and credentials.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "private",
        "credential",
        "token",
    ]
    .iter()
    .any(|word| key.contains(word))
        || matches!(
            key.as_str(),
            "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config" | "ssl.keystore.pem"
        )
}

/// The canonical spelling of a key: trimmed, and `metadata.broker.list` as
/// `bootstrap.servers` (librdkafka's alias).
fn normalize(key: &str) -> String {
    match key.trim() {
        "metadata.broker.list" => BOOTSTRAP.to_owned(),
        other => other.to_owned(),
    }
}

/// The file's text: UTF-8 when it is valid UTF-8 (what people write today), else ISO 8859-1
/// (what Java's `Properties.load(InputStream)` assumes), so any byte is read as something.
fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// The properties of a Java `.properties` text, by the rules of `java.util.Properties.load`:
/// natural lines end at `\n`, `\r` or `\r\n`; blank lines and lines whose first non-blank
/// character is `#` or `!` are comments; a line ending in an odd number of backslashes goes on
/// on the next line (whose leading blanks are dropped); the key ends at the first unescaped `=`,
/// `:` or blank, and blanks, then one `=` or `:`, then blanks separate it from the value;
/// `\t \n \r \f \uXXXX` are escapes and a backslash before any other character stands for that
/// character. A later key replaces an earlier one. `Err((line, problem))` for a malformed
/// `\uXXXX`, the only thing Java refuses.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, (usize, &'static str)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let lines = natural_lines(text);
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start_matches(is_blank);
        i += 1;
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        let mut logical = String::from(first);
        while ends_in_odd_backslashes(&logical) {
            logical.pop();
            match lines.get(i) {
                Some(next) => logical.push_str(next.trim_start_matches(is_blank)),
                None => break,
            }
            i += 1;
        }
        let (key, value) = split_property(&logical);
        let key = unescape(key).map_err(|problem| (start + 1, problem))?;
        let value = unescape(value).map_err(|problem| (start + 1, problem))?;
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    Ok(out)
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

fn natural_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['\n', '\r']) {
            Some(at) => {
                lines.push(&rest[..at]);
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            None => {
                lines.push(rest);
                rest = "";
            }
        }
    }
    lines
}

fn ends_in_odd_backslashes(line: &str) -> bool {
    line.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Splits a logical line (leading blanks gone, escapes still in) into raw key and raw value.
fn split_property(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '=' || c == ':' || is_blank(c) {
            key_end = at;
            break;
        }
    }
    let key = &line[..key_end];
    let mut rest = line[key_end..].trim_start_matches(is_blank);
    if let Some(after) = rest.strip_prefix(['=', ':']) {
        rest = after.trim_start_matches(is_blank);
    }
    (key, rest)
}

fn unescape(raw: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = (hex.len() == 4)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or("malformed \\uXXXX escape")?;
                // A lone UTF-16 surrogate has no char; Java would keep it, we cannot.
                out.push(char::from_u32(unit).ok_or("\\uXXXX escape of a lone surrogate")?);
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// How a cluster refused the service, as told by librdkafka's error callback. A broker that is
/// down or unreachable is not a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// SASL authentication failed (wrong user name, password or mechanism).
    Authentication,
    /// The TLS handshake failed: the broker's certificate is not trusted, or the broker refused
    /// the client's certificate (mutual TLS), or the versions or ciphers do not match.
    Tls,
}

impl Refusal {
    /// The refusal an error of the client's error callback stands for, if it is one. By code
    /// and text: a client certificate refused under TLS 1.3 arrives as a transport failure
    /// whose reason names the TLS alert.
    pub fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<Self> {
        match code {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Some(Self::Authentication)
            }
            Some(RDKafkaErrorCode::SSL) => Some(Self::Tls),
            _ if reason.contains("SASL authentication error")
                || reason.contains("Authentication failed") =>
            {
                Some(Self::Authentication)
            }
            _ if reason.contains("SSL")
                && (reason.contains("certificate")
                    || reason.contains("alert")
                    || reason.contains("handshake")) =>
            {
                Some(Self::Tls)
            }
            _ => None,
        }
    }

    /// What the refusal is, for `waiting_for` and the log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Authentication => {
                "authentication failed (check sasl.mechanism, sasl.username and sasl.password)"
            }
            Self::Tls => {
                "TLS handshake failed (check ssl.ca.location for the broker's certificate, and \
                 the client certificate and key for mutual TLS)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn props(text: &str) -> Vec<(String, String)> {
        parse_properties(text).expect("valid properties")
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn properties_follow_java_rules() {
        let text = "# a comment\n\
                    ! another\n\
                    \n   \t\n\
                    a=1\n\
                    b : 2\n\
                    c 3\n\
                    d\t=\t 4  \n\
                    e:=5\n\
                    f\n\
                    g = one\\\n     two \\\\\n\
                    h = x\\\r\n  y\r\
                    key\\ with\\:odd\\=chars = v\\tal\\u00e9\\\\\n\
                    \x20   # an indented comment\n\
                    a=again";
        assert_eq!(
            props(text),
            pairs(&[
                ("b", "2"),
                ("c", "3"),
                ("d", "4  "),
                ("e", "=5"),
                ("f", ""),
                ("g", "onetwo \\"),
                ("h", "xy"),
                ("key with:odd=chars", "v\talé\\"),
                ("a", "again"),
            ])
        );
    }

    #[test]
    fn properties_edge_cases() {
        // A comment line does not continue, even when it ends in a backslash.
        assert_eq!(props("# c \\\nx=1"), pairs(&[("x", "1")]));
        // A continuation at the end of the text just ends.
        assert_eq!(props("x=1\\"), pairs(&[("x", "1")]));
        // Escaped separators and a value holding separators.
        assert_eq!(
            props("sasl.password=p=ss:w rd#!"),
            pairs(&[("sasl.password", "p=ss:w rd#!")])
        );
        assert_eq!(props("\\#x=1"), pairs(&[("#x", "1")]));
        assert_eq!(
            parse_properties("a=\\u12"),
            Err((1, "malformed \\uXXXX escape"))
        );
        assert_eq!(
            parse_properties("a=1\nb=\\uzzzz"),
            Err((2, "malformed \\uXXXX escape"))
        );
        assert_eq!(decode(b"a=\xe9"), "a=é", "not UTF-8: read as ISO 8859-1");
    }

    fn options(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    struct File(std::path::PathBuf);

    impl File {
        fn with(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "permit-stats-kafka-{}-{}.properties",
                std::process::id(),
                rand::random::<u32>()
            ));
            let mut file = fs::File::create(&path).expect("temp file");
            file.write_all(text.as_bytes()).expect("written");
            Self(path)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn options_win_over_the_file_and_brokers_over_both() {
        let file = File::with(
            "bootstrap.servers=file:9092\nsecurity.protocol=SASL_SSL\nlinger.ms=5\nsasl.username=u\n",
        );
        let load = |brokers, opts: &[&str]| {
            KafkaSettings::load(brokers, Some(&file.0), &options(opts)).expect("valid")
        };
        let settings = load(None, &["linger.ms=50", "client.rack = r1"]);
        assert_eq!(settings.bootstrap(), Some("file:9092"));
        let config = settings.client_config(&[("linger.ms", "1"), ("acks", "all")]);
        assert_eq!(config.get("linger.ms"), Some("50"), "option over file");
        assert_eq!(config.get("acks"), Some("all"), "stage default kept");
        assert_eq!(config.get("client.rack"), Some("r1"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("bootstrap.servers"), Some("file:9092"));

        let settings = load(None, &["metadata.broker.list=opt:9092"]);
        assert_eq!(settings.bootstrap(), Some("opt:9092"), "option over file");
        let settings = load(Some("flag:9092"), &["bootstrap.servers=opt:9092"]);
        assert_eq!(
            settings.bootstrap(),
            Some("flag:9092"),
            "--brokers over all"
        );
        assert_eq!(
            settings.client_config(&[]).get("bootstrap.servers"),
            Some("flag:9092")
        );

        let none = KafkaSettings::load(None, None, &[]).expect("valid");
        assert_eq!(none.bootstrap(), None, "the embedded broker's case");
        assert!(matches!(
            none.require_bootstrap(),
            Err(KafkaSettingsError::NoBrokers)
        ));
        assert_eq!(
            none.with_bootstrap("e:1")
                .client_config(&[])
                .get("bootstrap.servers"),
            Some("e:1")
        );
        assert_eq!(
            KafkaSettings::load(Some("b:1"), None, &[]).expect("valid"),
            KafkaSettings::plain("b:1"),
            "without the new flags: exactly as before"
        );
    }

    #[test]
    fn owned_settings_are_refused_by_name() {
        let refused = |opts: &[&str]| {
            KafkaSettings::load(Some("b:1"), None, &options(opts))
                .expect_err("refused")
                .to_string()
        };
        let message = refused(&["group.id=mine", "enable.auto.commit=true", "linger.ms=1"]);
        assert!(message.contains("group.id ("), "{message}");
        assert!(message.contains("enable.auto.commit ("), "{message}");
        assert!(!message.contains("linger.ms"), "{message}");
        for key in [
            "enable.auto.offset.store",
            "auto.offset.reset",
            "statistics.interval.ms",
        ] {
            assert!(refused(&[&format!("{key}=x")]).contains(key));
        }
        assert!(refused(&["isolation.level=read_uncommitted"]).contains("isolation.level"));
        assert!(
            KafkaSettings::load(None, None, &options(&["isolation.level=read_committed"])).is_ok(),
            "the service's own level may be spelled out"
        );
        let file = File::with("group.id=from-file\n");
        let error = KafkaSettings::load(None, Some(&file.0), &[]).expect_err("refused");
        assert!(error.to_string().contains("group.id"), "{error}");

        let jaas = refused(&[
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"u\" password=\"hunter2\";",
        ]);
        assert!(
            jaas.contains("sasl.username") && !jaas.contains("hunter2"),
            "{jaas}"
        );
        let bad = refused(&["linger.ms=1", "no-equals-sign"]);
        assert!(bad.contains("number 2 is not KEY=VALUE"), "{bad}");
        assert!(!bad.contains("no-equals-sign"), "{bad}");
        let bad = KafkaSettings::load(None, None, &options(&["sasl.password:hunter2"]))
            .expect_err("refused")
            .to_string();
        assert!(!bad.contains("hunter2"), "{bad}");
    }

    #[test]
    fn secrets_are_never_shown() {
        let secret = "s3cr3t-Value";
        let settings = KafkaSettings::load(
            Some("b:9093"),
            None,
            &options(&[
                &format!("sasl.password={secret}"),
                &format!("ssl.key.pem=-----BEGIN PRIVATE KEY-----{secret}"),
                &format!("ssl.key.password={secret}"),
                &format!("sasl.oauthbearer.client.secret={secret}"),
                &format!("sasl.oauthbearer.config=principal=x secret={secret}"),
                "sasl.username=permit-stats",
                "security.protocol=SASL_SSL",
            ]),
        )
        .expect("valid");
        for shown in [format!("{settings}"), format!("{settings:?}")] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("sasl.username=permit-stats"), "{shown}");
            assert!(shown.contains("sasl.password=<redacted>"), "{shown}");
            assert!(shown.contains("bootstrap.servers=b:9093"), "{shown}");
        }
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.truststore.password",
            "sasl.jaas.config",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "sasl.username",
            "ssl.ca.location",
            "ssl.certificate.pem",
            "linger.ms",
        ] {
            assert!(!is_secret(key), "{key}");
        }

        // librdkafka echoes a refused value in its error: taken out.
        let error = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            format!("Invalid value \"{secret}\" for configuration property \"ssl.key.password\""),
            "ssl.key.password".into(),
            secret.into(),
        );
        let shown = settings.redact(error).to_string();
        assert!(
            !shown.contains(secret) && shown.contains("ssl.key.password"),
            "{shown}"
        );
        let shown = settings
            .redact(KafkaError::ClientCreation(format!("bad key {secret}")))
            .to_string();
        assert!(!shown.contains(secret), "{shown}");
    }

    /// What librdkafka really says about a bad value of a secret key: the error is redacted.
    #[test]
    fn librdkafka_errors_about_secret_values_are_redacted() {
        let secret = "not-a-pem-s3cr3t";
        let settings = KafkaSettings::load(
            Some("127.0.0.1:1"),
            None,
            &options(&[
                "security.protocol=SSL",
                &format!("ssl.key.pem={secret}"),
                "ssl.certificate.pem=nope",
            ]),
        )
        .expect("valid");
        let result: Result<rdkafka::producer::BaseProducer, _> =
            settings.client_config(&[]).create();
        let Err(error) = result else {
            panic!("librdkafka should refuse the key");
        };
        let error = settings.redact(error);
        let shown = format!("{error} / {error:?}");
        assert!(!shown.contains(secret), "{shown}");

        let settings = KafkaSettings::load(
            Some("127.0.0.1:1"),
            None,
            &options(&[&format!("sasl.password.bogus={secret}")]),
        )
        .expect("valid");
        let result: Result<rdkafka::producer::BaseProducer, _> =
            settings.client_config(&[]).create();
        let Err(raw) = result else {
            panic!("librdkafka should refuse an unknown property");
        };
        assert!(
            raw.to_string().contains(secret),
            "librdkafka echoes it: {raw}"
        );
        let shown = settings.redact(raw).to_string();
        assert!(!shown.contains(secret), "{shown}");
    }

    #[test]
    fn refusals_are_told_apart_from_outages() {
        use RDKafkaErrorCode as C;
        assert_eq!(
            Refusal::classify(Some(C::Authentication), "SASL authentication error: ..."),
            Some(Refusal::Authentication)
        );
        assert_eq!(
            Refusal::classify(
                Some(C::SSL),
                "SSL handshake failed: certificate verify failed"
            ),
            Some(Refusal::Tls)
        );
        assert_eq!(
            Refusal::classify(
                Some(C::BrokerTransportFailure),
                "ssl://127.0.0.1:1/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 \
                 alert bad certificate: SSL alert number 42"
            ),
            Some(Refusal::Tls)
        );
        assert_eq!(
            Refusal::classify(
                Some(C::BrokerTransportFailure),
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
            ),
            None
        );
        assert_eq!(
            Refusal::classify(Some(C::AllBrokersDown), "1/1 brokers are down"),
            None
        );
    }
}
