//! HTTPS: the certificate chain and private key of `--tls-cert`/`--tls-key` (PEM), the rustls
//! server configuration that serves them, and their reload on SIGHUP or change through the API's
//! one reload mechanism (`api/reload.rs`).
//!
//! rustls runs with the `ring` provider, which builds with a C compiler alone (`aws-lc-rs` also
//! wants cmake). The configuration is built once; the certificate it presents comes from
//! [`Tls`]'s resolver, an `ArcSwap` that a reload replaces whole: a handshake that starts after a
//! reload gets the new pair, a connection already open keeps the one it was made with. A pair
//! that does not load (unreadable, not PEM, a key that does not match the certificate) keeps the
//! previous one and says why in the log. The only ALPN protocol offered is `http/1.1`, which is
//! all the server speaks.
//!
//! Errors never quote the files: a key file's lines are the key.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::reload::{self, Reload, Stamps};

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key of the first certificate (PKCS #8, PKCS #1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate chain and key were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("cannot read the TLS certificate chain {path}: {problem}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong, never quoting the file.
        problem: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("cannot read the TLS private key {path}: {problem}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong, never quoting the file.
        problem: String,
    },
    /// The key is of a kind rustls cannot sign with, or is not the certificate's.
    // rustls' reason is in the message rather than a `source`: the reload's log line shows the
    // message alone, and the start's error chain would show it twice.
    #[error("the TLS private key {key} does not go with the certificate {cert}: {reason}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls' reason.
        reason: rustls::Error,
    },
    /// rustls refused the configuration (no protocol version in common with the provider).
    #[error("cannot set up TLS: {0}")]
    Config(rustls::Error),
}

/// What is wrong with a PEM file, without quoting it.
fn pem_problem(error: rustls_pki_types::pem::Error, what: &str) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => format!("no PEM {what} in it"),
        Error::SectionTooLarge => "a PEM section is over 256 MB".to_owned(),
        Error::MissingSectionEnd { .. }
        | Error::IllegalSectionStart { .. }
        | Error::Base64Decode(_) => "not valid PEM".to_owned(),
        _ => "not valid PEM".to_owned(),
    }
}

/// Reads and checks a certificate chain and its key.
fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_path = || files.cert.display().to_string();
    let key_path = || files.key.display().to_string();
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_path(),
            problem: pem_problem(e, "certificate"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path(),
            problem: "no PEM certificate in it".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: key_path(),
        problem: pem_problem(e, "private key"),
    })?;
    // Parses the key, and the certificate's public key to compare them: a key that is not the
    // certificate's would fail every handshake.
    CertifiedKey::from_der(chain, key, provider).map_err(|reason| TlsError::Pair {
        cert: cert_path(),
        key: key_path(),
        reason,
    })
}

/// The pair a handshake presents now; swapped whole by a reload.
struct Current(ArcSwap<CertifiedKey>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The server side of HTTPS: the rustls configuration and the pair it presents now. Cheap to
/// clone; clones share the pair, so a reload through one is seen by all.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    current: Arc<Current>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("alpn", &"http/1.1")
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `files`; an error names the file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load_pair(files, &provider)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(pair)));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            current,
        })
    }

    /// Loads `files` again and presents them from the next handshake on; on an error the
    /// current pair stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let pair = load_pair(files, self.config.crypto_provider())?;
        self.current.0.store(Arc::new(pair));
        Ok(())
    }

    /// The acceptor of one connection's handshake.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// Keeps a [`Tls`] in step with its files.
#[derive(Debug)]
pub struct TlsReloader {
    files: TlsFiles,
    tls: Tls,
    stamps: Stamps,
}

impl TlsReloader {
    /// Watches `files`, whose pair `tls` presents now.
    pub fn new(files: TlsFiles, tls: Tls) -> Self {
        let stamps = Stamps::new(vec![files.cert.clone(), files.key.clone()]);
        Self { files, tls, stamps }
    }

    /// Whether either file looks different on disk from when it was last read.
    pub fn changed(&self) -> bool {
        self.stamps.changed()
    }

    /// Reads both files again and presents the new pair from the next handshake on; on an
    /// error the current pair stays.
    pub fn reload(&mut self) -> Result<(), TlsError> {
        self.stamps.mark();
        self.tls.reload(&self.files)
    }
}

impl Reload for TlsReloader {
    const WHAT: &'static str = "TLS certificate";

    fn changed(&self) -> bool {
        TlsReloader::changed(self)
    }

    fn reload_and_log(&mut self, trigger: &'static str) {
        let cert = self.files.cert.display().to_string();
        match self.reload() {
            Ok(()) => info!(%cert, trigger, "TLS certificate reloaded"),
            Err(e) => warn!(
                %cert,
                trigger,
                error = %e,
                "TLS certificate not reloaded; keeping the previous one"
            ),
        }
    }
}

/// Reloads `tls` from `files` on SIGHUP and, when `poll` is given, whenever a poll at that
/// interval sees either file changed; until `cancel`.
pub fn spawn_reload(
    files: TlsFiles,
    tls: Tls,
    poll: Option<Duration>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    reload::spawn(Some(TlsReloader::new(files, tls)), poll, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "permit-stats-tls-{}-{name}-{}",
                std::process::id(),
                crate::api::auth::generate()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate for localhost and its key, in PEM.
    fn self_signed() -> (String, String) {
        let pair = rcgen::generate_simple_self_signed(["localhost".to_owned()]).expect("rcgen");
        (pair.cert.pem(), pair.signing_key.serialize_pem())
    }

    #[test]
    fn a_good_pair_loads_and_a_bad_one_is_refused_with_the_file_named_and_not_quoted() {
        let dir = TempDir::new("load");
        let files = TlsFiles {
            cert: dir.0.join("cert.pem"),
            key: dir.0.join("key.pem"),
        };
        let ((cert, key), (_, other_key)) = (self_signed(), self_signed());
        std::fs::write(&files.cert, &cert).expect("write");
        std::fs::write(&files.key, &key).expect("write");
        let tls = Tls::load(&files).expect("a good pair");
        assert_eq!(tls.config.alpn_protocols, [b"http/1.1".to_vec()]);
        let presented = || tls.current.0.load_full().cert[0].clone();
        let before = presented();

        // The key of another certificate: refused, the old pair stays.
        std::fs::write(&files.key, &other_key).expect("write");
        let e = tls.reload(&files).expect_err("mismatched key");
        assert!(matches!(e, TlsError::Pair { .. }), "{e}");
        assert_eq!(presented(), before);

        // Garbage where the key was: named, not quoted.
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nsecret!!\n").expect("write");
        let e = tls.reload(&files).expect_err("not PEM");
        let message = e.to_string();
        assert!(matches!(e, TlsError::Key { .. }), "{message}");
        assert!(message.contains("key.pem"), "{message}");
        assert!(!message.contains("secret"), "{message}");

        // The two files swapped: a key is no certificate.
        let swapped = TlsFiles {
            cert: files.key.clone(),
            key: files.cert.clone(),
        };
        std::fs::write(&files.key, &key).expect("write");
        let e = Tls::load(&swapped).expect_err("swapped");
        assert!(matches!(e, TlsError::Cert { .. }), "{e}");

        // Missing files.
        let missing = TlsFiles {
            cert: dir.0.join("none.pem"),
            key: files.key.clone(),
        };
        assert!(matches!(Tls::load(&missing), Err(TlsError::Cert { .. })));
        tls.reload(&files).expect("the good pair again");
        assert_eq!(presented(), before);
    }
}
