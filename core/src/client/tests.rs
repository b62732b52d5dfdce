use super::*;
use crate::api::{AntiEntropyRequest, parse_op};
use crate::entity::Op;

#[test]
fn path_segments_encode_every_byte_but_the_unreserved() {
    for (key, encoded) in [
        ("plain-key_1.2~", "plain-key_1.2~"),
        ("a/b", "a%2Fb"),
        ("what?", "what%3F"),
        ("x#y", "x%23y"),
        ("100%", "100%25"),
        ("with space", "with%20space"),
        ("a+b=c&d", "a%2Bb%3Dc%26d"),
        (
            "naïve-ключ-鍵",
            "na%C3%AFve-%D0%BA%D0%BB%D1%8E%D1%87-%E9%8D%B5",
        ),
        ("%2F-literal", "%252F-literal"),
        ("...", "..."),
        (":@!$'()*,;", "%3A%40%21%24%27%28%29%2A%2C%3B"),
    ] {
        assert_eq!(segment("key", key).unwrap(), encoded, "{key}");
    }
    assert_eq!(
        entity_path("tickets", "a/b").unwrap(),
        "/v1/entities/tickets/a%2Fb"
    );
}

#[test]
fn dot_and_empty_segments_are_refused_before_sending() {
    for key in [".", "..", ""] {
        let e = entity_path("tickets", key).unwrap_err();
        assert!(
            e.to_string().contains("cannot be a URL path segment"),
            "{e}"
        );
    }
}

#[test]
fn queries_carry_only_the_given_values_encoded() {
    assert_eq!(query(&[("class", None), ("limit", None)]), "");
    assert_eq!(
        query(&[("class", Some("a&b")), ("limit", Some("200"))]),
        "?class=a%26b&limit=200"
    );
    let opts = WriteOptions {
        consistency: Some("quorum".into()),
        home: Some("eu west".into()),
        session: Some("not in the query".into()),
    };
    assert_eq!(write_query(&opts), "?consistency=quorum&home=eu%20west");
}

#[test]
fn an_error_keeps_the_regions_json_or_its_text() {
    let e = api_error(
        StatusCode::CONFLICT,
        br#"{"error":"not_conflicted","detail":"`t/k` is not in conflict"}"#,
    );
    assert_eq!((e.status, e.error.as_str()), (409, "not_conflicted"));
    assert_eq!(e.detail, "`t/k` is not in conflict");
    let e = api_error(StatusCode::REQUEST_TIMEOUT, b"");
    assert_eq!((e.status, e.error.as_str()), (408, "request_timeout"));
    let e = api_error(StatusCode::BAD_GATEWAY, b"upstream down\n");
    assert_eq!(e.detail, "upstream down");
    let refused = ClientError::Refused {
        region: "us-east".into(),
        method: "POST".into(),
        url: "http://127.0.0.1:7101/v1/conflicts/t/k/resolve".into(),
        error: Box::new(api_error(
            StatusCode::CONFLICT,
            br#"{"error":"not_conflicted","detail":"nothing to resolve"}"#,
        )),
    };
    assert_eq!(
        refused.to_string(),
        "us-east answered HTTP 409 to POST http://127.0.0.1:7101/v1/conflicts/t/k/resolve: nothing to resolve"
    );
    let Error::Remote(remote) = Error::from(refused) else {
        panic!("a refusal stays the region's error");
    };
    assert_eq!(
        (remote.status, remote.error.as_str()),
        (409, "not_conflicted")
    );
    assert!(remote.detail.starts_with("us-east answered HTTP 409"));
}

/// The bodies this client sends are the ones the region parses.
#[test]
fn bodies_are_what_the_region_reads() {
    for (op, want) in [
        (EntityOp::Incr { by: -3 }, Op::Incr(-3)),
        (EntityOp::Decr { by: 2 }, Op::Incr(-2)),
        (
            EntityOp::Add {
                member: Value::from("x"),
            },
            Op::Add(Value::from("x")),
        ),
        (
            EntityOp::Remove {
                member: serde_json::json!({"id": 1}),
            },
            Op::Remove(serde_json::json!({"id": 1})),
        ),
    ] {
        let body = serde_json::to_value(&op).unwrap();
        assert_eq!(parse_op(&body, "c").unwrap(), want, "{body}");
    }
    for r in [
        Resolution::Value(serde_json::json!({"status": "done"})),
        Resolution::Delete,
    ] {
        let body = serde_json::to_value(&r).unwrap();
        assert_eq!(Resolution::parse(&body).unwrap(), r, "{body}");
    }
    let body = serde_json::to_value(AntiEntropyRequest::default()).unwrap();
    assert_eq!(body, serde_json::json!({}));
}

/// Answers one HTTP request with `NodeStats::default()` as JSON and hands
/// back the request's head (request line and headers, lowercased).
async fn one_request_server() -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            head.extend_from_slice(&buf[..n]);
        }
        let body = serde_json::to_vec(&NodeStats::default()).unwrap();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    (url, task)
}

#[tokio::test]
async fn a_client_at_a_location_names_it_on_client_calls() {
    let (url, head) = one_request_server().await;
    RegionClient::new("us-west", &url)
        .with_tokens("c", "a")
        .with_client_geo("paris")
        .stats()
        .await
        .unwrap();
    let head = head.await.unwrap();
    assert!(head.contains("x-parallax-client-geo: paris\r\n"), "{head}");
    let (url, head) = one_request_server().await;
    RegionClient::new("us-west", &url)
        .with_tokens("c", "a")
        .stats()
        .await
        .unwrap();
    let head = head.await.unwrap();
    assert!(!head.contains("x-parallax-client-geo"), "{head}");
}
