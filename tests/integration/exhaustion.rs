//! Resource exhaustion by unauthenticated clients: slow bodies, slow headers
//! and oversized bodies must not take the broker's capacity from real callers
//! or from the clouds fetching its keys.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A small broker: 16 request slots, a 2 s window to send headers and body.
async fn small_broker() -> World {
    let backstage = BackstageDouble::start().await;
    let sts = StsRecorder::start(StsBehaviour::Succeed).await;
    let mut options = BrokerOptions::new(&backstage, &sts.url);
    options.env = vec![
        (
            "STACKPASS_SERVER__MAX_CONCURRENT_REQUESTS".into(),
            "16".into(),
        ),
        ("STACKPASS_SERVER__HEADER_READ_TIMEOUT".into(), "2s".into()),
        ("STACKPASS_SERVER__BODY_READ_TIMEOUT".into(), "2s".into()),
    ];
    let broker = Broker::start(options).await;
    World::from_parts(backstage, sts, broker)
}

async fn connect(broker: &Broker) -> TcpStream {
    let address = broker.url.trim_start_matches("http://");
    TcpStream::connect(address).await.unwrap()
}

/// Opens a request that promises a 10 kB body and sends one byte of it.
async fn slow_body(broker: &Broker, token: Option<&str>) -> TcpStream {
    let mut stream = connect(broker).await;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/credentials HTTP/1.1\r\nHost: stackpass\r\n{auth}Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_slow_body_flood_leaves_room_for_issuance_and_the_jwks() {
    let w = small_broker().await;
    let token = w.backstage.user_token("user:default/jane");
    // Four times as many slow bodies as there are slots, half of them with a
    // real token (an insider), half anonymous.
    let mut flood = Vec::new();
    for i in 0..64 {
        let token = (i % 2 == 0).then_some(token.as_str());
        flood.push(slow_body(&w.broker, token).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While they trickle: the clouds still get the keys, and a real caller
    // still gets credentials (a body being read holds no request slot).
    let jwks = w.broker.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200, "{}", jwks.text);
    let discovery = w.broker.get("/.well-known/openid-configuration").await;
    assert_eq!(discovery.status, 200, "{}", discovery.text);
    let issued = w
        .broker
        .request_credentials(Some(&token), credential_request("pulumi:acme/payments/dev"))
        .await;
    assert_eq!(issued.status, 200, "{}", issued.text);

    // The slow callers were answered and let go, not left hanging.
    for mut stream in flood {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the broker closes a connection whose body never comes");
        let _ = read;
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let w = small_broker().await;
    let mut stream = connect(&w.broker).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: stackpass\r\nX-Slow: ")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(6), stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the connection is still open after 6 s");

    // An idle keep-alive connection is closed too.
    let mut idle = connect(&w.broker).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: stackpass\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let closed =
        tokio::time::timeout(Duration::from_secs(6), idle.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "an idle connection is still open after 6 s");
}

#[tokio::test]
async fn an_oversized_body_gets_a_413_the_client_can_read() {
    let w = small_broker().await;
    let token = w.backstage.user_token("user:default/jane");
    let padding = "x".repeat(1024 * 1024);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/credentials", w.broker.url))
        .bearer_auth(&token)
        .json(
            &json!({ "stack": "pulumi:acme/payments/dev", "provider": "aws", "padding": padding }),
        )
        .send()
        .await
        .expect("the 413 reaches the client instead of a reset connection");
    let response = TestResponse::from_response(response).await;
    response.assert_problem(413, "payload-too-large");
}
