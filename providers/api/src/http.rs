//! For providers that call a cloud's documented REST endpoints (GCP, Azure):
//! one client shape (bounded connect and total time, no redirects, which
//! could carry a subject token somewhere unexpected) and one call that reads a
//! bounded answer and says what went wrong in the provider's terms. Behind the
//! `http` feature, so a provider with its own SDK pulls in no extra client.

use std::time::Duration;

use crate::{ProviderError, ProviderKind};

/// Token answers are small; anything larger is not the cloud.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A client whose every call ends within `timeout`.
pub fn client(timeout: Duration, user_agent: &'static str) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(user_agent)
        .build()
        .expect("the TLS backend is compiled in, so building a client cannot fail")
}

/// Sends `request` to `service` and returns the status and a body of at most
/// [`MAX_RESPONSE_BYTES`]. An unreachable service, a 5xx or a 429 is
/// [`ProviderError::Unavailable`] (retry later); any other status is the
/// caller's to interpret.
pub async fn send(
    request: reqwest::RequestBuilder,
    provider: ProviderKind,
    service: &str,
) -> Result<(reqwest::StatusCode, Vec<u8>), ProviderError> {
    let unavailable = |message: String| ProviderError::Unavailable {
        provider: provider.clone(),
        message,
    };
    let mut response = request.send().await.map_err(|e| {
        unavailable(format!(
            "{service} {}",
            if e.is_timeout() {
                "did not answer in time"
            } else {
                "could not be reached"
            }
        ))
    })?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| unavailable(format!("{service} closed the connection mid-answer")))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::InvalidResponse {
                provider: provider.clone(),
                message: format!("{service} sent more than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(unavailable(format!("{service} answered HTTP {status}")));
    }
    Ok((status, body))
}
