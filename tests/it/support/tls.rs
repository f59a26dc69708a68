//! A test PKI for the HTTPS tests: a CA made by the test (rcgen), server certificates it signs
//! for `localhost` and `127.0.0.1`, the PEM files the server reads, and clients that trust that
//! CA alone: reqwest, and a raw rustls client that shows the certificate and ALPN protocol a
//! handshake got.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use permit_stats::api::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::TempDir;

/// A server certificate and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM (PKCS #8).
    pub key_pem: String,
    /// The certificate, DER: what a client is shown.
    pub der: CertificateDer<'static>,
}

/// A CA, the files the server reads, and the clients that trust the CA.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// Where the server's certificate and key are.
    pub files: TlsFiles,
    /// Holds the files.
    pub dir: TempDir,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("files", &self.files).finish()
    }
}

impl Pki {
    /// A new CA, and a first server certificate (`first`) installed in the files.
    pub fn new() -> (Self, Leaf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "permit-stats test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA certificate");
        let dir = TempDir::new("permit-stats-tls");
        let files = TlsFiles {
            cert: dir.0.join("server.crt"),
            key: dir.0.join("server.key"),
        };
        let pki = Self {
            issuer: Issuer::new(params, key),
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            files,
            dir,
        };
        let first = pki.issue("permit-stats one", 1);
        pki.install(&first);
        (pki, first)
    }

    /// A server certificate for localhost and 127.0.0.1 with common name `name` and serial
    /// `serial`, signed by the CA.
    pub fn issue(&self, name: &str, serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes `leaf` over the server's files, each by a rename (as careful tools and
    /// Kubernetes do): key first, then certificate.
    pub fn install(&self, leaf: &Leaf) {
        self.write(&self.files.key.clone(), &leaf.key_pem);
        self.write(&self.files.cert.clone(), &leaf.cert_pem);
    }

    /// Writes `text` over `path` by a rename.
    pub fn write(&self, path: &Path, text: &str) {
        let aside = path.with_extension("tmp");
        std::fs::write(&aside, text).expect("write aside");
        std::fs::rename(&aside, path).expect("rename over");
    }

    /// The CA's certificate written to `ca.crt` in the folder, for tools that read a file.
    pub fn ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.0.join("ca.crt");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    /// reqwest over rustls, trusting the CA alone, with the server's certificate in each
    /// response's `TlsInfo`.
    pub fn reqwest(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA PEM"),
            )
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("https client")
    }

    /// A rustls client configuration trusting the CA alone, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA certificate");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A new connection's TLS handshake with `addr` as `localhost`, offering `alpn`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("a name");
        tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(self.client_config(alpn)).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    }

    /// The certificate a new connection to `addr` is shown.
    pub async fn presented(&self, addr: SocketAddr) -> CertificateDer<'static> {
        let stream = self
            .connect(addr, &[b"http/1.1"])
            .await
            .expect("a trusted handshake");
        stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a certificate")[0]
            .clone()
    }
}

/// Valid from yesterday for 30 days: browsers frown on the 4096 year default.
fn set_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(30);
}

/// Sends one HTTP/1.1 request over an open TLS stream and reads its answer (head and
/// `Content-Length` body); `None` when the connection closed first.
pub async fn request_over(
    stream: &mut TlsStream<TcpStream>,
    request: &str,
) -> Option<(u16, String)> {
    use tokio::io::AsyncWriteExt as _;
    stream.write_all(request.as_bytes()).await.ok()?;
    let answer = super::server::read_answer(stream, Duration::from_secs(10)).await?;
    Some((answer.status, answer.body))
}
