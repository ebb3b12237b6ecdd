//! A request the model cannot read is refused before it reaches the decoding loop.

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
