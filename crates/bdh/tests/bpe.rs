//! BPE tokenizers: exact round trips, bits per byte by hand, a training run that
//! reads its text with a BPE, and a tokenizer that does not fit its model.

use std::sync::atomic::AtomicBool;

use bdh::data::{Bpe, Corpus, DataConfig, Tokenizer, TOKENIZER_FILE};
use bdh::eval::{bits_per_byte, evaluate_tokens};
use bdh::train::run::train;
use bdh::{forward, Activations, Mode, Model, ModelConfig, RunConfig};

use crate::common::{bdh_model, temp_dir, tiny_config};

/// A text of this test's own writing, with words in four scripts and an emoji, of
/// about `sentences` × 40 bytes.
pub fn text(sentences: usize) -> String {
    let who = ["the dragon", "a hatchling", "la señora", "the smith", "Zoë", "東京の猫"];
    let does = ["reads", "keeps", "finds", "gives back", "lernt über", "remembers"];
    let what = ["a map of the north", "the café's menu", "five blue stones", "наш дом", "the 🐉 egg"];
    (0..sentences)
        .map(|i| {
            format!("{} {} {}.{}", who[i % 6], does[i * 7 % 6], what[i * 3 % 5], if i % 4 == 3 { "\n" } else { " " })
        })
        .collect()
}

/// A BPE of at most `vocab` tokens learnt from [`text`].
pub fn trained(vocab: usize) -> Bpe {
    Bpe::train(text(400).as_bytes(), vocab).unwrap()
}

#[test]
fn bpe_gives_back_every_text_exactly() {
    let bpe = trained(320);
    let tok = Tokenizer::Bpe(bpe.clone());
    println!("vocabulary {}", tok.vocab_size());
    assert!(tok.vocab_size() > 256 && tok.vocab_size() <= 320);
    let seen = text(40);
    let unseen = "Ünïcödé it was not trained on: ñandú, Ελλάδα, 日本語の文章, 🐉🐲 and \u{0}\t\r\n  spaces.";
    let not_utf8: &[u8] = b"bytes \xff\xfe that are not UTF-8 \xe6\x97 (a cut character)\n";
    for (name, t) in [("seen", seen.as_bytes()), ("unseen", unseen.as_bytes()), ("not UTF-8", not_utf8), ("empty", b"")]
    {
        let ids = tok.encode(t);
        assert_eq!(tok.decode(&ids), t, "{name}");
        // One token at a time, as generation decodes: the same bytes.
        let mut one_by_one = Vec::new();
        ids.iter().for_each(|&id| tok.decode_into(id, &mut one_by_one));
        assert_eq!(one_by_one, t, "{name}");
        assert_eq!(tok.bytes_of(&ids), t.len(), "{name}");
        println!("{name}: {} bytes, {} tokens", t.len(), ids.len());
    }
    // It compresses what it learnt from, and some token splits a multi-byte character.
    assert!(tok.encode(seen.as_bytes()).len() < seen.len());
    let splits = (0..tok.vocab_size() as u32).any(|id| std::str::from_utf8(bpe.piece(id).unwrap()).is_err());
    assert!(splits, "no token ends inside a character");
    // Saved and read back, the same tokenizer.
    let tmp = temp_dir("bpe-file");
    tok.save(tmp.path()).unwrap();
    let back = Tokenizer::load(&tmp.path().join(TOKENIZER_FILE)).unwrap();
    assert_eq!(back, tok);
    assert_eq!(back.encode(unseen.as_bytes()), tok.encode(unseen.as_bytes()));
}

#[test]
fn bits_per_byte_divide_the_summed_loss_by_the_bytes() {
    // 2 tokens at 3·ln 2 nats each over 6 bytes: 6 bits over 6 bytes.
    assert!((bits_per_byte(3.0 * std::f64::consts::LN_2, 2, 6) - 1.0).abs() < 1e-12);
    // Bytes: exactly loss / ln 2.
    assert_eq!(bits_per_byte(1.2345, 77, 77), 1.2345 / std::f64::consts::LN_2);

    // A model over a short text, the loss of every token computed here by hand.
    let bpe = trained(300);
    let tok = Tokenizer::Bpe(bpe.clone());
    let ids = tok.encode("la señora finds the 🐉 egg.".as_bytes());
    let cfg = bdh::model::bdh::BdhConfig { vocab_size: tok.vocab_size(), ..tiny_config(1, 16, 2, 4) };
    let model = bdh_model(cfg, 3);
    let (inputs, targets) = (&ids[..ids.len() - 1], &ids[1..]);
    let mut acts = Activations::new(&model, 1, inputs.len()).unwrap();
    forward(&model, inputs, &mut acts, Mode::Eval).unwrap();
    let v = tok.vocab_size();
    let nats: f64 = acts
        .logits()
        .chunks_exact(v)
        .zip(targets)
        .map(|(row, &target)| {
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            max + sum.ln() - row[target as usize] as f64
        })
        .sum();
    let bytes: usize = targets.iter().map(|&id| bpe.piece(id).unwrap().len()).sum();
    let by_hand = nats / bytes as f64 / std::f64::consts::LN_2;
    let r = evaluate_tokens(&model, &ids, &tok, ids.len(), 1, &mut |_, _| {}).unwrap();
    println!(
        "{} tokens, {bytes} bytes: {by_hand:.6} bits/byte by hand, {:.6} evaluated",
        targets.len(),
        r.bits_per_byte
    );
    assert_eq!((r.tokens, r.bytes), (targets.len(), bytes));
    assert!(bytes > targets.len());
    assert!((r.bits_per_byte - by_hand).abs() < 1e-5 * by_hand);
    assert!((r.loss - nats / targets.len() as f64).abs() < 1e-5 * r.loss);
}

#[test]
fn a_short_run_trains_on_text_read_with_a_bpe() {
    let tmp = temp_dir("bpe-run");
    let dir = tmp.path();
    let data = dir.join("text.txt");
    std::fs::write(&data, text(800)).unwrap();
    let bpe = trained(300);
    let tok_file = dir.join("bpe.json");
    std::fs::write(&tok_file, bpe.json()).unwrap();
    let sets: Vec<String> =
        ["training.max_steps=6", "training.eval_interval=3", "training.batch_size=2", "training.eval_batches=2"]
            .map(String::from)
            .to_vec();
    let mut cfg = RunConfig::resolve("tiny", &sets).unwrap();
    cfg.data = DataConfig { path: Some(data), tokenizer: Some(tok_file), ..cfg.data };
    cfg.model.set_vocab_size(bpe.vocab_size());
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    let Corpus::Tokens { train: part, .. } = &corpus else { panic!("a tokenized corpus") };
    assert!(part.ids.len() < part.text.bytes().len(), "the BPE shortens the text");
    let run_dir = dir.join("run");
    let out = train(&cfg, &corpus, &run_dir, false, &AtomicBool::new(false), |_| {}).unwrap();
    let m = out.last_eval.unwrap();
    println!("losses {:?}; val loss {:.4} nats/token, {:.4} bits/byte", out.losses, m.val_loss, m.bits_per_byte);
    assert_eq!(out.losses.len(), 6);
    assert!(out.losses[5] < out.losses[0], "{:?}", out.losses);
    // More bytes than tokens: fewer bits per byte than per token.
    assert!(m.bits_per_byte < m.val_loss / std::f64::consts::LN_2);
    // The run, and each checkpoint, keeps its tokenizer.
    for d in [run_dir.clone(), run_dir.join("best"), run_dir.join("last")] {
        assert_eq!(std::fs::read_to_string(d.join(TOKENIZER_FILE)).unwrap(), bpe.json(), "{}", d.display());
    }
    assert_eq!(bdh::io::checkpoint::tokenizer_path(&run_dir), Some(run_dir.join("best").join(TOKENIZER_FILE)));

    // The built-in corpus is bytes: a tokenizer there is refused.
    let builtin = DataConfig { path: None, ..cfg.data.clone() };
    let err = builtin.corpus(64).unwrap_err().to_string();
    assert!(err.contains("built-in corpus") && err.contains("--data"), "{err}");
}

#[test]
fn a_tokenizer_and_a_model_of_other_vocabularies_are_refused() {
    let tok = Tokenizer::Bpe(trained(300));
    let bytes_model = ModelConfig::Bdh(tiny_config(1, 16, 2, 4));
    let err = tok.check(&bytes_model).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("vocabulary has 256 tokens") && err.contains(&format!("{}", tok.vocab_size())), "{err}");
    let err = Tokenizer::Bytes.check(&ModelConfig::Bdh(bdh::model::bdh::BdhConfig {
        vocab_size: tok.vocab_size(),
        ..tiny_config(1, 16, 2, 4)
    }));
    assert!(err.unwrap_err().to_string().contains("--tokenizer"));
    // Evaluation and training refuse the pair too.
    let model: Model = bdh_model(tiny_config(1, 16, 2, 4), 1);
    let ids = tok.encode(b"some text to score");
    let err = evaluate_tokens(&model, &ids, &tok, 8, 1, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("vocabulary"), "{err}");
    let tmp = temp_dir("bpe-mismatch");
    let data = tmp.path().join("text.txt");
    std::fs::write(&data, text(300)).unwrap();
    let cfg = RunConfig::resolve("tiny", &[]).unwrap();
    let data_cfg = DataConfig { path: Some(data), ..cfg.data.clone() };
    let corpus = data_cfg.corpus_with(cfg.training.block_size, tok).unwrap();
    let err = train(&cfg, &corpus, &tmp.path().join("run"), false, &AtomicBool::new(false), |_| {}).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
}
