//! The outbound HTTP client stackpass uses for Backstage and OIDC discovery: one
//! place that fixes timeouts, refuses redirects (a redirect could send a catalog
//! token or a JWKS fetch somewhere unexpected), bounds response sizes, decides
//! which certificate authorities are trusted (the public roots, an operator's
//! private CA bundle, or both) and which URLs may be fetched over plain http.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("could not reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} sent invalid JSON: {message}")]
    InvalidJson { url: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsTrustError {
    #[error("could not read the CA bundle {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("the CA bundle {path} holds no PEM certificate ({message}); give a file of -----BEGIN CERTIFICATE----- blocks")]
    Invalid { path: String, message: String },
    #[error("trust_public_roots = false needs a ca_file, or no server could be trusted")]
    NothingTrusted,
}

/// Which certificate authorities an endpoint's client trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsTrust {
    /// A PEM bundle of extra CAs (an internal Backstage's private CA).
    pub ca_file: Option<PathBuf>,
    /// `false`: trust only `ca_file`, not the public web PKI.
    pub public_roots: bool,
}

impl TlsTrust {
    pub fn public() -> TlsTrust {
        TlsTrust {
            ca_file: None,
            public_roots: true,
        }
    }

    /// Reads and parses the bundle: what `config check` and startup both run.
    pub fn certificates(&self) -> Result<Vec<reqwest::Certificate>, TlsTrustError> {
        let Some(path) = &self.ca_file else {
            return if self.public_roots {
                Ok(Vec::new())
            } else {
                Err(TlsTrustError::NothingTrusted)
            };
        };
        let shown = || path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| TlsTrustError::Unreadable {
            path: shown(),
            message: e.to_string(),
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsTrustError::Invalid {
                path: shown(),
                message: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(TlsTrustError::Invalid {
                path: shown(),
                message: "no certificate found".into(),
            });
        }
        Ok(certificates)
    }
}

/// A client that trusts the public roots only (webhooks).
pub fn build(timeout: Duration) -> reqwest::Client {
    build_trusting(timeout, &TlsTrust::public())
        .expect("the public roots are compiled in, so building a client cannot fail")
}

/// A client that trusts what `trust` names.
pub fn build_trusting(
    timeout: Duration,
    trust: &TlsTrust,
) -> Result<reqwest::Client, TlsTrustError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stackpass/", env!("CARGO_PKG_VERSION")))
        .tls_built_in_root_certs(trust.public_roots);
    for certificate in trust.certificates()? {
        builder = builder.add_root_certificate(certificate);
    }
    Ok(builder
        .build()
        .expect("the TLS backend is compiled in, so building a client cannot fail"))
}

/// Hosts whose traffic never leaves the machine: `localhost` and loopback IPs.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether identity or ownership may come from `url`: https always; plain http
/// only to a loopback host or where the operator accepted the risk for that
/// endpoint (`insecure_allow_http`), since anyone on the path could forge
/// tokens or rewrite group membership. `Err` says why, for an error message.
pub fn check_scheme(url: &Url, insecure_allow_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if insecure_allow_http || is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{url} is plain http to a host that is not loopback, so anyone on the path could forge identities or ownership"
        )),
        other => Err(format!("{url} is a {other}: URL; only https (or http to loopback) is fetched")),
    }
}

/// A URL the broker learned from a document it fetched (an OIDC discovery
/// document's `jwks_uri`): besides [`check_scheme`], an https document may not
/// send the broker to plain http, loopback or not, unless allowed.
pub fn check_learned_scheme(
    url: &Url,
    learned_from: &Url,
    insecure_allow_http: bool,
) -> Result<(), String> {
    if url.scheme() == "http" && learned_from.scheme() == "https" && !insecure_allow_http {
        return Err(format!(
            "{url} is plain http but was named by the https document {learned_from}; a downgrade would let anyone on the path swap the keys"
        ));
    }
    check_scheme(url, insecure_allow_http)
}

/// Sends `request` and parses a JSON body of at most `limit` bytes. A 404 is
/// returned as `Ok(None)` because every caller treats "not there" as an answer.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    url: &str,
    limit: usize,
) -> Result<Option<T>, FetchError> {
    let unreachable = |e: reqwest::Error| FetchError::Unreachable {
        url: url.to_owned(),
        message: without_url(&e),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| FetchError::InvalidJson {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

/// reqwest errors embed the URL; we already name it, so keep only the cause.
fn without_url(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    // The cause that matters (a refused certificate, say) is often several
    // sources deep: hyper's "client error (Connect)" wraps rustls's error.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    if message.contains("certificate") {
        message.push_str(" (a server with a private CA needs its bundle in ca_file)");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_only_for_loopback_unless_allowed() {
        let url = |s: &str| Url::parse(s).unwrap();
        for ok in [
            "https://backstage.example.com",
            "http://127.0.0.1:7007",
            "http://localhost:7007",
            "http://[::1]:7007",
        ] {
            assert!(check_scheme(&url(ok), false).is_ok(), "{ok}");
        }
        assert!(check_scheme(&url("http://backstage.internal"), false).is_err());
        assert!(check_scheme(&url("http://backstage.internal"), true).is_ok());
        assert!(check_scheme(&url("ftp://backstage.internal"), true).is_err());
        let https = url("https://idp.example.com/.well-known/openid-configuration");
        let http_loopback = url("http://127.0.0.1:9/jwks");
        assert!(check_learned_scheme(&http_loopback, &https, false).is_err());
        assert!(check_learned_scheme(&http_loopback, &https, true).is_ok());
        let http_discovery = url("http://127.0.0.1:9/.well-known/openid-configuration");
        assert!(check_learned_scheme(&http_loopback, &http_discovery, false).is_ok());
    }
}
