//! Answers equal `bdh generate`'s: streamed and whole, alone and decoded together,
//! with a BPE; a GPT is refused; the `openai` client reads the server.

use super::*;

#[test]
fn answers_equal_generate_streamed_and_whole() {
    let s = Server::start(&[]);
    let cases = [
        (
            json!({"prompt": "ROMEO:", "max_tokens": 60, "temperature": 0}),
            vec!["--max-tokens", "60", "--temperature", "0"],
        ),
        (
            json!({"prompt": "KING HENRY:\n", "max_tokens": 80, "temperature": 0.9, "top_p": 0.9, "seed": 7, "stop": ["\n\n", "lord"]}),
            vec![
                "--max-tokens",
                "80",
                "--temperature",
                "0.9",
                "--top-p",
                "0.9",
                "--seed",
                "7",
                "--stop",
                "\n\n",
                "--stop",
                "lord",
            ],
        ),
        (
            json!({"prompt": "First Citizen:", "max_tokens": 50, "seed": 3}),
            vec!["--max-tokens", "50", "--temperature", "1", "--seed", "3"],
        ),
    ];
    for (body, flags) in cases {
        let want = generate(body["prompt"].as_str().unwrap(), &flags);
        let whole = s.ok("/v1/completions", &body);
        assert_eq!(text_of(&whole), want, "{body}");
        let (streamed, last) = s.stream("/v1/completions", &body);
        assert_eq!(streamed, want, "{body} streamed");
        let usage = &whole["usage"];
        assert_eq!(usage["prompt_tokens"], body["prompt"].as_str().unwrap().len());
        assert_eq!(last["usage"], *usage, "the last chunk carries the same counts");
        let reason = whole["choices"][0]["finish_reason"].as_str().unwrap();
        let n = usage["completion_tokens"].as_u64().unwrap();
        assert!((reason == "length") == (n == body["max_tokens"].as_u64().unwrap()), "{reason} after {n}");
        println!("{body}: {reason}, {n} tokens, {want:?}");
    }
    // Chat: the messages through the template, then the same generation.
    let chat = json!({"messages": [{"role": "system", "content": "A play."}, {"role": "user", "content": "Speak."}],
                      "max_tokens": 40, "temperature": 0.7, "seed": 11});
    let want = generate(
        "system: A play.\nuser: Speak.\nassistant:",
        &["--max-tokens", "40", "--temperature", "0.7", "--seed", "11"],
    );
    let whole = s.ok("/v1/chat/completions", &chat);
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(text_of(&whole), want);
    let (streamed, last) = s.stream("/v1/chat/completions", &chat);
    assert_eq!((streamed, last["object"].as_str()), (want, Some("chat.completion.chunk")));
    let (status, models) = s.get("/v1/models");
    assert_eq!((status, models["data"][0]["id"].as_str()), (200, Some("ref-small-trained")));
    let (status, health) = s.get("/health");
    assert_eq!((status, health["status"].as_str(), health["state_bytes"].as_u64()), (200, Some("ok"), Some(8 << 20)));
}

#[test]
fn streams_decoded_together_each_equal_their_own_generate() {
    let s = Server::start(&[]);
    let prompts = ["ROMEO:", "JULIET:\nO ", "To be", "MENENIUS:\nWhat", "Ay, my lord", "Now is the winter"];
    let answers: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let s = &s;
                scope.spawn(move || {
                    let body = json!({"prompt": p, "max_tokens": 100 + 10 * k, "temperature": 0.8, "seed": k});
                    if k % 2 == 0 {
                        s.stream("/v1/completions", &body).0
                    } else {
                        text_of(&s.ok("/v1/completions", &body))
                    }
                })
            })
            .collect();
        handles.into_iter().zip(prompts).map(|(h, p)| (p.to_string(), h.join().unwrap())).collect()
    });
    for (k, (p, got)) in answers.iter().enumerate() {
        let (max, seed) = ((100 + 10 * k).to_string(), k.to_string());
        let want = generate(p, &["--max-tokens", &max, "--temperature", "0.8", "--seed", &seed]);
        assert_eq!(got, &want, "stream {k} ({p:?})");
    }
}

#[test]
fn a_gpt_is_refused_with_the_reason() {
    let o = bdh(&["serve", "--model", &golden("gpt-tiny"), "--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("BDH models"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_openai_python_client_reads_the_server() {
    let has = Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has {
        crate::common::skipped(
            "the OpenAI Python client check",
            "the `openai` Python package is not installed (pip install openai)",
        );
        return;
    }
    let s = Server::start(&[]);
    let script = format!(
        r#"
import openai
c = openai.OpenAI(base_url="{}/v1", api_key="none")
a = c.completions.create(model="m", prompt="ROMEO:", max_tokens=20, temperature=0)
b = "".join(x.choices[0].text for x in c.completions.create(model="m", prompt="ROMEO:", max_tokens=20, temperature=0, stream=True))
m = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "Speak."}}], max_tokens=10, seed=1)
assert a.choices[0].text == b, (a, b)
print(a.choices[0].text == b, a.usage.completion_tokens, m.choices[0].message.role)
"#,
        s.base
    );
    let o = Command::new("python3").args(["-c", &script]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.trim(), "True 20 assistant");
}

#[test]
fn a_model_that_reads_a_bpe_is_served_with_its_tokenizer() {
    let tmp = temp("serve-bpe");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let (data, tok, run) = (p("text.txt"), p("tok.json"), p("run"));
    let lines = ["the dragon keeps a map of the north.", "la señora reads the café's menu.", "東京の猫 finds the egg."];
    let corpus: String = (0..600).map(|i| format!("{} {}\n", lines[i % 3], i % 7)).collect();
    std::fs::write(&data, &corpus).unwrap();
    assert!(bdh(&["tokenizer", "train", "--data", &data, "--vocab-size", "300", "--out", &tok]).status.success());
    let mut a = vec!["train", "--preset", "tiny", "--data", &data, "--tokenizer", &tok, "--out", &run, "--quiet"];
    a.extend(["--set", "training.max_steps=3", "--set", "training.batch_size=2", "--set", "training.eval_batches=1"]);
    assert!(bdh(&a).status.success());
    let s = Server::start_model(&run, &[]);
    let body = json!({"prompt": "la señora ", "max_tokens": 12, "temperature": 0.8, "seed": 5});
    let v = s.ok("/v1/completions", &body);
    let want = generate_with(&run, "la señora ", &["--max-tokens", "12", "--temperature", "0.8", "--seed", "5"]);
    assert_eq!(text_of(&v), want);
    assert_eq!(v["usage"]["completion_tokens"], 12, "tokens of the BPE, not bytes: {v}");
    // A tokenizer of another vocabulary than the model's is refused at start.
    let o = bdh(&["serve", "--model", &model(), "--tokenizer", &tok, "--port", "0"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("vocab"), "{o:?}");
}
