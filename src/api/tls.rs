//! The broker's own https (`[server.tls]`): loading the certificate chain
//! and key, the rustls server configuration (TLS 1.2 and 1.3, ALPN
//! `http/1.1`), and reloading a renewed pair without a restart.
//!
//! The pair in force sits behind a [`ResolvesServerCert`]; a task reads both
//! files every `reload_interval` and swaps in a new pair when their contents
//! change. Polling contents rather than watching with inotify: Kubernetes
//! renews a mounted Secret by swapping a `..data` symlink, which a watch on
//! the files' own paths does not see, and cert-manager or a `cp -p` can keep
//! the modification time; reading two small files every few seconds sees
//! exactly what a fresh `open` would. A pair that does not load (unparsable,
//! or a key that does not match the certificate, as when the certificate was
//! replaced a moment before its key) is refused with an error, and the pair
//! in force keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerTlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.{key}: could not read {path}: {message}")]
    Unreadable {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("server.tls.cert_file: {path} holds no PEM certificate; give the server certificate first, then its intermediates, as -----BEGIN CERTIFICATE----- blocks")]
    NoCertificate { path: String },
    #[error("server.tls.key_file: {path} holds no usable private key ({message}); give a PEM PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY")]
    InvalidKey { path: String, message: String },
    #[error("server.tls: the key in {key_path} does not belong to the first certificate in {cert_path} ({message})")]
    Mismatch {
        cert_path: String,
        key_path: String,
        message: String,
    },
}

/// The pair a server presents, as loaded, with what the logs say about it.
pub struct LoadedCertificate {
    certified: Arc<CertifiedKey>,
    /// SHA-256 over both files' bytes: what the reloader compares.
    fingerprint: [u8; 32],
    /// The leaf certificate's serial (hex) and `notAfter`, when readable.
    serial: Option<String>,
    not_after: Option<OffsetDateTime>,
}

/// What `stackpass config check` runs: the files load as a matching pair.
pub fn check(config: &ServerTlsConfig) -> Result<(), TlsError> {
    load(&config.cert_file, &config.key_file).map(|_| ())
}

/// Reads and checks a certificate chain and its key.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<LoadedCertificate, TlsError> {
    let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
    parse_pair(cert_file, key_file, &cert_pem, &key_pem)
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Unreadable {
            key,
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    Ok((read("cert_file", cert_file)?, read("key_file", key_file)?))
}

fn parse_pair(
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<LoadedCertificate, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: cert_file.display().to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_file.display().to_string(),
        });
    };
    let (serial, not_after) = match leaf_facts(leaf) {
        Some((serial, not_after)) => (Some(serial), not_after),
        None => (None, None),
    };
    let invalid_key = |message: String| TlsError::InvalidKey {
        path: key_file.display().to_string(),
        message,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        invalid_key(match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key found".to_owned(),
            other => other.to_string(),
        })
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid_key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert_path: cert_file.display().to_string(),
        key_path: key_file.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(LoadedCertificate {
        certified: Arc::new(certified),
        fingerprint: fingerprint(cert_pem, key_pem),
        serial,
        not_after,
    })
}

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert_pem.len() as u64).to_be_bytes());
    hash.update(cert_pem);
    hash.update(key_pem);
    hash.finalize().into()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl LoadedCertificate {
    fn log(&self, what: &str, files: &Files) {
        let serial = self.serial.as_deref().unwrap_or("unreadable");
        match self.not_after {
            Some(not_after) => {
                let left = not_after - OffsetDateTime::now_utc();
                let expires = not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                if left.is_negative() {
                    tracing::error!(cert_file = %files.cert.display(), serial, expires, "{what}: the TLS certificate has EXPIRED; clients will refuse it");
                } else if left < time::Duration::days(14) {
                    tracing::warn!(cert_file = %files.cert.display(), serial, expires, days_left = left.whole_days(), "{what}: the TLS certificate expires soon");
                } else {
                    tracing::info!(cert_file = %files.cert.display(), serial, expires, days_left = left.whole_days(), "{what}: TLS certificate");
                }
            }
            None => {
                tracing::warn!(cert_file = %files.cert.display(), serial, "{what}: TLS certificate (its expiry could not be read)");
            }
        }
    }
}

#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

/// The pair in force, swapped whole by the reloader.
#[derive(Debug)]
pub struct LiveCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete pair: the writer only swaps an Arc.
        Some(match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

impl LiveCertificate {
    fn replace(&self, certified: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut current) => *current = certified,
            Err(poisoned) => *poisoned.into_inner() = certified,
        }
    }
}

/// Loads the pair, builds the acceptor, and starts the reloader (which runs
/// as long as the runtime does). Must be called inside the tokio runtime.
pub fn acceptor(config: &ServerTlsConfig) -> Result<TlsAcceptor, TlsError> {
    let files = Files {
        cert: config.cert_file.clone(),
        key: config.key_file.clone(),
    };
    let loaded = load(&files.cert, &files.key)?;
    loaded.log("serving", &files);
    let live = Arc::new(LiveCertificate {
        current: RwLock::new(loaded.certified.clone()),
    });
    let server = server_config(live.clone());
    tokio::spawn(reload(
        live,
        files,
        loaded.fingerprint,
        config.reload_interval,
    ));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// TLS 1.2 and 1.3 (rustls has nothing older), the pair from `resolver`, and
/// ALPN `http/1.1`: the listener speaks HTTP/1.1 only, so a client that
/// offers only h2 is refused in the handshake rather than misunderstood.
fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> rustls::ServerConfig {
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server
}

async fn reload(live: Arc<LiveCertificate>, files: Files, mut serving: [u8; 32], every: Duration) {
    // A refused pair, or unreadable files, are logged once, not every poll.
    let mut refused: Option<[u8; 32]> = None;
    let mut unreadable = false;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let paths = files.clone();
        let attempt = tokio::task::spawn_blocking(move || -> Result<_, TlsError> {
            let (cert_pem, key_pem) = read_pair(&paths.cert, &paths.key)?;
            let seen = fingerprint(&cert_pem, &key_pem);
            if seen == serving || refused == Some(seen) {
                return Ok(None);
            }
            Ok(Some((
                seen,
                parse_pair(&paths.cert, &paths.key, &cert_pem, &key_pem),
            )))
        })
        .await;
        let Ok(attempt) = attempt else { continue };
        match attempt {
            Ok(None) => unreadable = false,
            Ok(Some((_, Ok(loaded)))) => {
                loaded.log("reloaded", &files);
                live.replace(loaded.certified.clone());
                serving = loaded.fingerprint;
                refused = None;
                unreadable = false;
            }
            Ok(Some((seen, Err(error)))) => {
                tracing::error!(%error, "the changed TLS certificate or key was refused; the previous certificate keeps serving");
                refused = Some(seen);
                unreadable = false;
            }
            Err(error) => {
                if !unreadable {
                    tracing::error!(%error, "the TLS certificate or key could not be read; the previous certificate keeps serving");
                }
                unreadable = true;
            }
        }
    }
}

/// The leaf's serial number (hex) and `notAfter`, read from its DER
/// (RFC 5280 section 4.1): for the logs only, so anything unexpected is `None`.
fn leaf_facts(der: &[u8]) -> Option<(String, Option<OffsetDateTime>)> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(certificate, 0x30)?;
    let tbs = match der_element(tbs, 0xa0) {
        Some((_, rest)) => rest,
        None => tbs,
    };
    let (serial, rest) = der_element(tbs, 0x02)?;
    let serial: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let (_, rest) = der_element(rest, 0x30)?; // signature algorithm
    let (_, rest) = der_element(rest, 0x30)?; // issuer
    let (validity, _) = der_element(rest, 0x30)?;
    let not_after = der_any(validity)
        .and_then(|(_, _, rest)| der_any(rest))
        .and_then(|(tag, time, _)| der_time(tag, time));
    Some((serial, not_after))
}

/// One DER element with the expected tag: its contents and what follows.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_any(input)?;
    (found == tag).then_some((contents, rest))
}

fn der_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if input.len() < length {
        return None;
    }
    let (contents, rest) = input.split_at(length);
    Some((tag, contents, rest))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows.
fn der_time(tag: u8, text: &[u8]) -> Option<OffsetDateTime> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits.get(..4)?.parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let month = time::Month::try_from(field(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, field(2)?).ok()?;
    let clock = time::Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(date.with_time(clock).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed `localhost` certificate for `key_pkcs8` (PEM), serial 0x2a.
    fn certificate_for(key_pkcs8: &str) -> String {
        let key = rcgen::KeyPair::from_pem(key_pkcs8).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(42u64));
        params.not_after = rcgen::date_time_ymd(2040, 2, 29);
        params.self_signed(&key).unwrap().pem()
    }

    fn load_texts(cert: &str, key: &str) -> Result<LoadedCertificate, TlsError> {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        load(&cert_file, &key_file)
    }

    #[test]
    fn loads_pkcs8_sec1_ec_and_pkcs1_rsa_keys() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        use rsa::pkcs1::EncodeRsaPrivateKey;

        let ec = p256::SecretKey::random(&mut rand_core::OsRng);
        let ec_pkcs8 = ec.to_pkcs8_pem(LineEnding::LF).unwrap();
        let ec_cert = certificate_for(&ec_pkcs8);
        let loaded = load_texts(&ec_cert, &ec_pkcs8).unwrap();
        assert_eq!(loaded.serial.as_deref(), Some("2a"));
        assert_eq!(
            loaded.not_after,
            Some(time::macros::datetime!(2040-02-29 00:00:00 UTC))
        );
        let sec1 = ec.to_sec1_pem(LineEnding::LF).unwrap();
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
        load_texts(&ec_cert, &sec1).unwrap();

        let rsa = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let rsa_cert = certificate_for(&rsa.to_pkcs8_pem(LineEnding::LF).unwrap());
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        load_texts(&rsa_cert, &pkcs1).unwrap();

        // Another key than the certificate's, a certificate file without
        // certificates, and a key file without a key are each named.
        assert!(matches!(
            load_texts(&rsa_cert, &sec1),
            Err(TlsError::Mismatch { .. })
        ));
        assert!(matches!(
            load_texts(&sec1, &sec1),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_texts(&ec_cert, &ec_cert),
            Err(TlsError::InvalidKey { .. })
        ));
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        assert_eq!(
            der_time(0x17, b"491231235959Z").unwrap(),
            time::macros::datetime!(2049-12-31 23:59:59 UTC)
        );
        assert_eq!(
            der_time(0x17, b"500101000000Z").unwrap(),
            time::macros::datetime!(1950-01-01 00:00:00 UTC)
        );
        assert_eq!(
            der_time(0x18, b"20510630120000Z").unwrap(),
            time::macros::datetime!(2051-06-30 12:00:00 UTC)
        );
        assert!(der_time(0x17, b"4912312359Z").is_none());
        assert!(der_time(0x17, b"491331235959Z").is_none());
        assert!(der_time(0x18, b"20510630120000").is_none());
    }

    #[test]
    fn truncated_or_garbage_der_is_none_not_a_panic() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x82, 0xff, 0xff, 0],
            &[0x30, 0x03, 0x30, 0x01],
        ] {
            assert!(leaf_facts(input).is_none(), "{input:?}");
        }
    }
}
