//! The OpenAI request fields this server reads, checked and bounded, the chat
//! template, and the JSON of its answers.

use bdh::data::Tokenizer;
use bdh::infer::{Generation, SamplingConfig};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::Finish;
use crate::error::ApiError;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`: a prompt.
    Text,
    /// `/v1/chat/completions`: messages, through the chat template.
    Chat,
}

/// The body of a completion or chat completion; fields not listed are ignored.
#[derive(Debug, Deserialize)]
pub struct Request {
    prompt: Option<OneOrMany>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    n: Option<u64>,
    stop: Option<OneOrMany>,
    stream: Option<bool>,
    session: Option<String>,
}

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One chat message.
#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// The server's limits on a request.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Prompt tokens at most (after the chat template).
    pub max_prompt_tokens: usize,
    /// `max_tokens` at most.
    pub max_tokens: usize,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
    /// The model's vocabulary: a prompt's token ids are below it.
    pub vocab_size: usize,
}

/// Stop strings a request may give, and bytes in each.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

/// A checked request, ready for the engine.
#[derive(Debug)]
pub struct Spec {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Tokens to generate and stop strings.
    pub generation: Generation,
    /// The sampler's settings, seed included.
    pub sampling: SamplingConfig,
    /// Answer as server-sent events.
    pub stream: bool,
    /// The session to continue and keep, if any.
    pub session: Option<String>,
}

/// The chat template: each message as `role: content` and a newline, then
/// `assistant:` for the model to continue. Roles are `system`, `user`, `assistant`.
fn chat_prompt(messages: &[Message]) -> Result<String, ApiError> {
    let mut prompt = String::new();
    for m in messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::bad(format!("message role {:?}: give system, user or assistant", m.role)));
        }
        prompt.push_str(&format!("{}: {}\n", m.role, m.content));
    }
    prompt.push_str("assistant:");
    Ok(prompt)
}

impl Request {
    /// Parses a body, refusing what is not a JSON request with a 400.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("the body is not a valid request: {e}")))
    }

    /// Checks every field against `limits` and the endpoint, and builds the job.
    pub fn spec(self, kind: Kind, limits: &Limits, tokenizer: &Tokenizer) -> Result<Spec, ApiError> {
        let text = match (kind, self.prompt, self.messages) {
            (Kind::Text, Some(OneOrMany::One(p)), _) => p,
            (Kind::Text, Some(OneOrMany::Many(mut ps)), _) if ps.len() == 1 => ps.remove(0),
            (Kind::Text, Some(OneOrMany::Many(_)), _) => return Err(ApiError::bad("give one prompt (n = 1)")),
            (Kind::Text, None, _) => return Err(ApiError::bad("`prompt` is required")),
            (Kind::Chat, _, Some(ms)) if !ms.is_empty() => chat_prompt(&ms)?,
            (Kind::Chat, _, _) => return Err(ApiError::bad("`messages` is required and may not be empty")),
        };
        if text.is_empty() {
            return Err(ApiError::bad("the prompt is empty"));
        }
        // (the body's size bounds the text, so encoding it first is bounded too)
        let prompt = tokenizer.encode(text.as_bytes());
        if prompt.len() > limits.max_prompt_tokens {
            return Err(ApiError::too_large(format!(
                "the prompt's {} tokens are more than this server's limit of {} (--max-prompt-tokens)",
                prompt.len(),
                limits.max_prompt_tokens
            )));
        }
        // A byte-level model may read fewer than the 256 bytes.
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= limits.vocab_size) {
            return Err(ApiError::bad(format!(
                "the prompt holds token {bad}, outside this model's vocabulary of {} tokens",
                limits.vocab_size
            )));
        }
        let max_tokens = self.max_tokens.or(self.max_completion_tokens).unwrap_or(limits.default_max_tokens as u64);
        if max_tokens > limits.max_tokens as u64 {
            return Err(ApiError::bad(format!(
                "max_tokens {max_tokens} is more than this server's limit of {} (--max-completion-tokens)",
                limits.max_tokens
            )));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("n must be 1"));
        }
        let stops = match self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        if stops.len() > MAX_STOPS || stops.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::bad(format!(
                "give at most {MAX_STOPS} stop strings of at most {MAX_STOP_BYTES} bytes"
            )));
        }
        let top_k = self.top_k.map_or(Ok(0), usize::try_from).map_err(|_| ApiError::bad("top_k is too large"))?;
        let sampling = SamplingConfig {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0),
        };
        sampling.validate().map_err(|e| ApiError::bad(e.to_string()))?;
        Ok(Spec {
            prompt,
            generation: Generation {
                max_tokens: max_tokens as usize,
                stops,
                tokenizer: tokenizer.clone(),
                ..Generation::default()
            },
            sampling,
            stream: self.stream.unwrap_or(false),
            session: self.session,
        })
    }
}

/// What every answer to one request repeats.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    /// Seconds since the epoch when the request came.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// Which endpoint.
    pub kind: Kind,
    /// The session, if the request continued one.
    pub session: Option<String>,
}

impl Meta {
    /// A choice carrying `text` and `finish_reason` (null while streaming).
    fn choice(&self, text: &str, finish: Option<&str>, streaming: bool) -> Value {
        match (self.kind, streaming) {
            (Kind::Text, _) => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }),
            (Kind::Chat, false) => json!({
                "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish
            }),
            (Kind::Chat, true) if finish.is_some() => json!({ "index": 0, "delta": {}, "finish_reason": finish }),
            (Kind::Chat, true) => {
                json!({ "index": 0, "delta": { "role": "assistant", "content": text }, "finish_reason": null })
            }
        }
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, choice: Value, streaming: bool) -> Value {
        json!({
            "id": self.id, "object": self.object(streaming), "created": self.created, "model": self.model,
            "choices": [choice],
        })
    }

    /// The whole answer of a request that did not stream.
    pub fn answer(&self, text: &str, f: &Finish, state_bytes: usize) -> Value {
        let mut v = self.envelope(self.choice(text, Some(f.reason.as_str()), false), false);
        self.add_usage(&mut v, f, state_bytes);
        v
    }

    /// One streamed chunk of text.
    pub fn chunk(&self, text: &str) -> Value {
        self.envelope(self.choice(text, None, true), true)
    }

    /// The last streamed chunk: the finish reason and the counts.
    pub fn last_chunk(&self, f: &Finish, state_bytes: usize) -> Value {
        let mut v = self.envelope(self.choice("", Some(f.reason.as_str()), true), true);
        self.add_usage(&mut v, f, state_bytes);
        v
    }

    fn add_usage(&self, v: &mut Value, f: &Finish, state_bytes: usize) {
        v["usage"] = json!({
            "prompt_tokens": f.prompt_tokens,
            "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens,
        });
        if let Some(id) = &self.session {
            v["session"] = json!({ "id": id, "position": f.position, "state_bytes": state_bytes });
        }
    }
}
