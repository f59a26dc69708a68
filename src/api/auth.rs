//! API tokens: the operators' token file (spec/operations.md), the check of a presented token,
//! and (in `auth/reload.rs`) the reload of the file on SIGHUP or when it changes on disk.
//!
//! The file holds only SHA-256 digests, never a token in clear. Tokens are never logged or echoed:
//! logs name a token by its entry's `name`, and error messages about the file are stripped of
//! anything token-shaped (see [`TokenFileError`]).
//!
//! # Timing
//!
//! A presented token is hashed and looked up by its digest in a `HashMap`, whose probe compares
//! digests with ordinary, early-exit equality. That is enough, and a constant-time comparison
//! (the `subtle` crate) would add nothing, because of what the timing could reveal: at most how
//! far SHA-256 of the attacker's own guess matches a stored digest (and, since the map's hasher is
//! keyed randomly per process, not even which stored digests its probe touched). Knowing a
//! digest, or part of one, does not help to find a token: that takes a SHA-256 preimage of 50
//! random letters and digits (~297 bits), and the attacker cannot steer the digest of a guess
//! towards a target byte by byte the way a plain-text comparison would let them steer a guess.
//! This is the same reason comparing HMACs needs constant time but looking up a hash of a
//! high-entropy secret does not. A linear scan with `subtle::ConstantTimeEq` would cost
//! O(tokens) per request for no gain.
//!
//! # Reload
//!
//! See [`spawn_reload`]: on SIGHUP and on a change seen by a poll, the new set is swapped in whole.

mod reload;

use std::{collections::HashMap, fmt, path::Path};

use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use reload::{Reloader, spawn_reload};

/// The permission the stats request needs.
pub const STATS_PERMISSION: &str = "permit-create";

/// Length of the tokens `permit-stats token` issues.
pub const TOKEN_LEN: usize = 50;

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape. The message never quotes the file:
    /// TOML's own would show the offending line, and a token pasted there by mistake with it.
    #[error("token file is not valid: line {line}: {message}")]
    Parse {
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// What is wrong, with token-shaped text replaced by `[redacted]`.
        message: String,
    },
    /// An entry's digest is not 64 lowercase hex digits.
    #[error("token {index} ({name:?}): sha256 must be 64 lowercase hex digits")]
    Digest {
        /// 1-based position in the file.
        index: usize,
        /// The entry's name.
        name: String,
    },
}

/// One `[[tokens]]` entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The client code this token may read.
    pub client: String,
    /// For humans and logs.
    pub name: String,
    /// What the token may do; the stats request needs `permit-create`.
    pub permissions: Vec<String>,
    /// SHA-256 of the token's UTF-8 bytes, 64 lowercase hex digits.
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// What a known token grants.
#[derive(Debug, Clone)]
struct Grant {
    client: Box<str>,
    name: Box<str>,
    stats: bool,
    /// Added in memory (the demo token), not read from the file: kept across reloads.
    pinned: bool,
}

/// A token's identity for per-token accounting (the rate limit): its SHA-256 digest, never the
/// token itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// A token that may read the stats of the client it was checked against.
#[derive(Debug, Clone, Copy)]
pub struct Authorized<'a> {
    /// The entry's name, for logs.
    pub name: &'a str,
    /// Its key for per-token accounting.
    pub key: TokenKey,
}

/// The set of accepted tokens, keyed by digest.
#[derive(Default, Clone)]
pub struct Tokens {
    grants: HashMap<[u8; 32], Grant>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.grants.len())
            .finish()
    }
}

impl Tokens {
    /// Reads and validates a token file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates the text of a token file.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let file: TokenFile = toml::from_str(text).map_err(|e| TokenFileError::Parse {
            line: e.span().map_or(0, |span| line_of(text, span.start)),
            message: redact(e.message()),
        })?;
        let mut tokens = Self::default();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let digest = parse_digest(&entry.sha256).ok_or_else(|| TokenFileError::Digest {
                index: i + 1,
                name: entry.name.clone(),
            })?;
            tokens.insert(digest, &entry, false);
        }
        Ok(tokens)
    }

    /// Adds a token given in clear (the demo token, which lives only in memory).
    pub fn add(&mut self, token: &str, client: &str, name: &str) {
        let entry = TokenEntry {
            client: client.into(),
            name: name.into(),
            permissions: vec![STATS_PERMISSION.into()],
            sha256: String::new(),
        };
        self.insert(digest(token), &entry, true);
    }

    fn insert(&mut self, digest: [u8; 32], entry: &TokenEntry, pinned: bool) {
        self.grants.insert(
            digest,
            Grant {
                client: entry.client.as_str().into(),
                name: entry.name.as_str().into(),
                stats: entry.permissions.iter().any(|p| p == STATS_PERMISSION),
                pinned,
            },
        );
    }

    /// Carries the in-memory tokens of `previous` (the demo token) over into this set, so that a
    /// reload of the file does not drop them.
    fn keep_pinned(&mut self, previous: &Self) {
        for (digest, grant) in previous.grants.iter().filter(|(_, grant)| grant.pinned) {
            self.grants.entry(*digest).or_insert_with(|| grant.clone());
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The name of the token if it may read `client`'s stats; `None` for an unknown token, one
    /// without `permit-create`, or one of another client (one answer for all: no oracle).
    pub fn authorize_stats(&self, token: &str, client: &str) -> Option<&str> {
        self.authorize(token, client).map(|grant| grant.name)
    }

    /// Like [`Tokens::authorize_stats`], with the token's key for per-token accounting.
    pub fn authorize(&self, token: &str, client: &str) -> Option<Authorized<'_>> {
        let digest = digest(token);
        self.grants
            .get(&digest)
            .filter(|grant| grant.stats && &*grant.client == client)
            .map(|grant| Authorized {
                name: &grant.name,
                key: TokenKey(digest),
            })
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Replaces every run of 20 or more token-alphabet characters (letters, digits, dashes) by
/// `[redacted]`: tokens are 50 of them and digests 64, while the field names and short values
/// that make an error message useful are shorter.
fn redact(message: &str) -> String {
    const MIN_RUN: usize = 20;
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= MIN_RUN {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_digest(hex_digits: &str) -> Option<[u8; 32]> {
    if hex_digits.len() != 64
        || !hex_digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// A new random token: 50 letters and digits.
pub fn generate() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(TOKEN_LEN)
        .map(char::from)
        .collect()
}

/// The `[[tokens]]` entry that grants `token` the stats of `client`.
pub fn entry_for(token: &str, client: &str, name: &str) -> Result<String, toml::ser::Error> {
    toml::to_string(&TokenFile {
        tokens: vec![TokenEntry {
            client: client.into(),
            name: name.into(),
            permissions: vec![STATS_PERMISSION.into()],
            sha256: hex::encode(digest(token)),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_is_accepted_by_its_entry_and_only_for_its_client() {
        let token = generate();
        assert_eq!(token.len(), TOKEN_LEN);
        let entry = entry_for(&token, "OC-TOMA", "meters \"A\"").expect("serializable");
        assert!(!entry.contains(&token), "the entry never holds the token");
        let tokens = Tokens::parse(&entry).expect("the printed entry is a valid file");
        assert_eq!(
            tokens.authorize_stats(&token, "OC-TOMA"),
            Some("meters \"A\"")
        );
        assert_eq!(tokens.authorize_stats(&token, "OC_TOMA"), None);
        assert_eq!(tokens.authorize_stats("wrong", "OC-TOMA"), None);
    }

    #[test]
    fn a_token_without_permit_create_is_refused() {
        let file = format!(
            "[[tokens]]\nclient = \"C\"\nname = \"n\"\npermissions = [\"permit-read\"]\nsha256 = \"{}\"\n",
            hex::encode(digest("t"))
        );
        let tokens = Tokens::parse(&file).expect("valid file");
        assert_eq!(tokens.authorize_stats("t", "C"), None);
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let bad_digest =
            "[[tokens]]\nclient = \"C\"\nname = \"n\"\npermissions = []\nsha256 = \"ABC\"\n";
        assert!(matches!(
            Tokens::parse(bad_digest),
            Err(TokenFileError::Digest { index: 1, .. })
        ));
        let typo = "[[tokens]]\nclient = \"C\"\nname = \"n\"\npermisions = []\nsha256 = \"\"\n";
        assert!(matches!(
            Tokens::parse(typo),
            Err(TokenFileError::Parse { line: 1.., .. })
        ));
        assert!(matches!(
            Tokens::load(Path::new("/nonexistent/tokens.toml")),
            Err(TokenFileError::Read { .. })
        ));
        assert!(
            Tokens::parse("")
                .expect("an empty file has no tokens")
                .is_empty()
        );
    }
    #[test]
    fn file_errors_never_quote_a_token() {
        let token = generate();
        for text in [
            format!(
                "[[tokens]]\nclient = \"C\"\nname = \"n\"\npermissions = \"{token}\"\nsha256 = \"\"\n"
            ),
            format!("[[tokens]]\nclient = \"C\"\n{token} = 1\n"),
            format!(
                "[[tokens]]\nclient = \"C\"\nname = \"n\"\npermissions = []\nsha256 = \"{token}\"\n"
            ),
            format!("{token}\n"),
        ] {
            let error = Tokens::parse(&text).expect_err("malformed");
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(&token), "{shown}");
            assert!(!shown.contains(&token[..20]), "{shown}");
        }
        let typo = Tokens::parse("[[tokens]]\nclient = \"C\"\nname = \"n\"\npermisions = []\n")
            .expect_err("unknown field");
        assert!(typo.to_string().contains("permisions"), "{typo}");
        assert!(typo.to_string().contains("line 4"), "{typo}");
    }
}
