//! The outbound HTTP client stackpass uses for Backstage and OIDC discovery: one
//! place that fixes timeouts, refuses redirects (a redirect could send a catalog
//! token or a JWKS fetch somewhere unexpected) and bounds response sizes.

use std::time::Duration;

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

pub fn build(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stackpass/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend is compiled in, so building a client cannot fail")
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
    if let Some(source) = std::error::Error::source(error) {
        message.push_str(": ");
        message.push_str(&source.to_string());
    }
    message
}
