//! [`TestCa`]: a private certificate authority made in the test (rcgen) and a
//! server certificate for `localhost` it signed; [`serve_tls`] serves an axum
//! router over https with it, as an internal Backstage behind a private CA is.
//! [`TestCa::server_pair`] signs more `localhost` certificates (PEM files for
//! the broker's own `[server.tls]`), and [`served_certificate`] reads the
//! certificate a server presents, as a rustls client trusting the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub struct TestCa {
    /// The CA certificate, PEM: what an operator puts in `ca_file`.
    pub pem: String,
    server: Arc<rustls::ServerConfig>,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A `localhost` server certificate and its key, PEM, and the certificate's
/// DER (what a client sees in the handshake).
pub struct ServerPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl ServerPair {
    /// Writes `cert.pem` and `key.pem` into `dir` (replacing them, as a
    /// renewal does); returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl TestCa {
    pub fn generate() -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "stackpass test private CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        TestCa {
            pem: ca_cert.pem(),
            server: Arc::new(server),
            ca_cert,
            ca_key,
        }
    }

    /// A server certificate for `localhost` with this serial, signed by the CA.
    pub fn server_pair(&self, serial: u64) -> ServerPair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        ServerPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA bundle into `dir` and returns its path.
    pub fn write_bundle(&self, dir: &Path) -> PathBuf {
        let path = dir.join("private-ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// Serves `router` over https on a random loopback port; returns
/// `https://localhost:PORT` (the name the certificate is for).
pub async fn serve_tls(router: Router, ca: &TestCa) -> String {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(ca.server.clone()),
    };
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("https://localhost:{port}")
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    /// A client that refuses the certificate fails its handshake; that
    /// connection is dropped and the next one accepted.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What a TLS client that trusts `ca` and offers ALPN `h2` and `http/1.1`
/// gets from `127.0.0.1:port` (SNI `localhost`): the leaf certificate's DER,
/// the negotiated ALPN protocol and the TLS version.
pub async fn served_certificate(
    port: u16,
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(Vec<u8>, Option<Vec<u8>>, rustls::ProtocolVersion), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, connection) = tls.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("no certificate")?
        .to_vec();
    Ok((
        leaf,
        connection.alpn_protocol().map(<[u8]>::to_vec),
        connection.protocol_version().unwrap(),
    ))
}
