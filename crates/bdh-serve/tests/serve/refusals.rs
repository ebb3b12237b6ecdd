//! A request the model cannot read is refused before it reaches the decoding loop.

use axum::body::Bytes;
use futures_util::StreamExt;

use super::*;

#[test]
fn a_prompt_outside_the_vocabulary_is_refused_with_400() {
    let s = Served::start(|c| c.model = tiny_model(64));
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "ab~", "max_tokens": 2}));
    assert_eq!(status, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("token 97") && message.contains("64"), "{message}");
    let (status, v) = s.post("/v1/completions", &json!({"prompt": "#!", "max_tokens": 2}));
    assert_eq!((status, &v["usage"]["completion_tokens"]), (200, &json!(2)), "{v}");
    assert_eq!(s.get("/health").1["streams"], 0);
}

#[test]
fn a_body_that_stalls_half_way_gets_408_after_the_read_timeout() {
    let s = Served::start(|c| c.read_timeout = Duration::from_millis(300));
    let (status, v, took) = s.runtime.block_on(async {
        // Half a body, then nothing: the client never sends the rest.
        let half = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{\"prompt\": "))])
            .chain(futures_util::stream::pending());
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/completions")
            .header("content-length", "40")
            .body(Body::from_stream(half))
            .unwrap();
        let start = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), s.router.clone().oneshot(request));
        let answer = answer.await.expect("an answer, not a wait for ever").unwrap();
        let status = answer.status().as_u16();
        let close = answer.headers().get("connection").cloned();
        let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX).await.unwrap();
        assert_eq!(close.as_ref().map(|v| v.to_str().unwrap()), Some("close"));
        (status, serde_json::from_slice::<Value>(&bytes).unwrap(), start.elapsed())
    });
    assert_eq!(status, 408, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("did not arrive"), "{v}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(s.post("/v1/completions", &json!({"prompt": "a", "max_tokens": 1})).0, 200);
}

#[test]
fn a_session_id_that_is_not_utf8_gets_a_json_400() {
    let s = Served::start(|_| {});
    for (method, path) in [
        (Method::GET, "/v1/sessions/se%80ss"),
        (Method::DELETE, "/v1/sessions/%ff"),
        (Method::POST, "/v1/sessions/%c3%28/fork"),
        (Method::POST, "/v1/sessions/%e2%82/save"),
    ] {
        let (status, v) = s.call(method, path, Some(&json!({"name": "x"})));
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("UTF-8"), "{path}: {v}");
    }
}
