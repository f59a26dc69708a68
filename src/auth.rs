//! API tokens: the operators' token file (spec/operations.md) and the check of a presented token.
//!
//! The file holds only SHA-256 digests, never a token in clear. A presented token is hashed and
//! looked up by its digest; what a lookup's timing could reveal is about the digest of the
//! attacker's own guess, never about a stored token. Tokens are never logged or echoed.

use std::{collections::HashMap, fmt, path::Path};

use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// The file is not valid TOML of the expected shape.
    #[error("token file is not valid")]
    Parse(#[from] toml::de::Error),
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
        let file: TokenFile = toml::from_str(text)?;
        let mut tokens = Self::default();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let digest = parse_digest(&entry.sha256).ok_or_else(|| TokenFileError::Digest {
                index: i + 1,
                name: entry.name.clone(),
            })?;
            tokens.insert(digest, &entry);
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
        self.insert(digest(token), &entry);
    }

    fn insert(&mut self, digest: [u8; 32], entry: &TokenEntry) {
        self.grants.insert(
            digest,
            Grant {
                client: entry.client.as_str().into(),
                name: entry.name.as_str().into(),
                stats: entry.permissions.iter().any(|p| p == STATS_PERMISSION),
            },
        );
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
        self.grants
            .get(&digest(token))
            .filter(|grant| grant.stats && &*grant.client == client)
            .map(|grant| &*grant.name)
    }
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
        assert!(matches!(Tokens::parse(typo), Err(TokenFileError::Parse(_))));
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
}
