//! The built-in synthetic language and the file corpus.

use std::collections::{HashMap, HashSet};

use bdh::data::{Corpus, DataConfig, SyntheticConfig, SyntheticLanguage};
use bdh::train::RunConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common::temp_dir;

fn lang() -> SyntheticLanguage {
    SyntheticLanguage::new(SyntheticConfig {
        facts: 3,
        min_facts: 3,
        distance: 2,
        lists: 0.0,
        ..SyntheticConfig::default()
    })
}

#[test]
fn synthetic_windows_are_deterministic_per_seed() {
    let l = lang();
    assert_eq!(l.window(7, 300), l.window(7, 300));
    assert_ne!(l.window(7, 300).text, l.window(8, 300).text);
    let c = Corpus::Synthetic(l);
    assert_eq!(c.train_batch(1, 5, 4, 64), c.train_batch(1, 5, 4, 64));
    assert_ne!(c.train_batch(1, 5, 4, 64), c.train_batch(1, 6, 4, 64));
    assert_eq!(c.val_batch(2, 4, 4, 64), c.val_batch(2, 4, 4, 64));
}

#[test]
fn every_answer_is_stated_earlier_in_its_document() {
    let l = lang();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..300 {
        let doc = l.document(&mut rng);
        assert_eq!(doc.answers.len(), 3);
        for a in &doc.answers {
            let answer = &doc.text[a.range.clone()];
            // The question right before the answer names a person; their fact holds the answer.
            let question = &doc.text[..a.range.start];
            let q = question.rsplit(". ").next().unwrap();
            let who = q
                .split_whitespace()
                .find(|w| !["where", "does", "what", "color", "live?", "like?"].contains(w))
                .unwrap();
            let stated = [format!("{who} lives in {answer}."), format!("{who} likes {answer}.")];
            assert!(
                stated.iter().any(|s| question.contains(s.as_str())),
                "{answer} for {who} not stated before: {}",
                doc.text
            );
        }
    }
}

#[test]
fn answers_are_not_in_the_weights() {
    // The same question gets many different answers across documents, so nothing
    // but the context can tell which one is right.
    let l = lang();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut answers: HashMap<String, HashSet<String>> = HashMap::new();
    for _ in 0..2000 {
        let doc = l.document(&mut rng);
        for a in &doc.answers {
            let q = doc.text[..a.range.start].rsplit(". ").next().unwrap().to_string();
            answers.entry(q).or_default().insert(doc.text[a.range.clone()].to_string());
        }
    }
    let min = answers.values().map(HashSet::len).min().unwrap();
    println!("{} questions, each with ≥ {min} different answers", answers.len());
    assert!(answers.len() > 30 && min >= 5);
}

#[test]
fn answer_positions_point_at_answer_targets() {
    let c = Corpus::Synthetic(lang());
    let (b, t) = (3, 300);
    let batch = c.val_batch(0, 1, b, t);
    assert!(!batch.answers.is_empty());
    for (row, a) in &batch.answers {
        let range = &a.range;
        let answer: String = range.clone().map(|p| batch.targets[row * t + p] as u8 as char).collect();
        let before: String = (0..=range.start).map(|p| batch.tokens[row * t + p] as u8 as char).collect();
        let asked = before.rsplit(". ").next().unwrap();
        assert!(asked.contains("? ") && (asked.ends_with(" lives in ") || asked.ends_with(" likes ")), "{asked:?}");
        assert!(before[..before.len() - asked.len()].contains(&answer), "{answer} not stated before {asked:?}");
    }
}

#[test]
fn lists_recall_every_key_with_its_value_and_answers_know_their_chance() {
    let l = SyntheticLanguage::new(SyntheticConfig {
        facts: 5,
        min_facts: 2,
        distance: 0,
        lists: 1.0,
        ..SyntheticConfig::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..300 {
        let doc = l.document(&mut rng);
        let (stated, asked) = doc.text.trim_end().trim_end_matches('.').split_once("; ").unwrap();
        let pairs: Vec<(&str, &str)> = stated.split(", ").map(|p| p.split_once(' ').unwrap()).collect();
        assert!((2..=5).contains(&pairs.len()), "{}", doc.text);
        assert_eq!(doc.answers.len(), pairs.len());
        for (a, q) in doc.answers.iter().zip(asked.split(", ")) {
            let (key, value) = q.split_once(' ').unwrap();
            assert_eq!(&doc.text[a.range.clone()], value);
            assert!(pairs.contains(&(key, value)), "{key} {value} not stated in {}", doc.text);
            assert!(a.list && a.facts == pairs.len());
            let same_kind: HashSet<&str> = pairs.iter().map(|p| p.1).filter(|v| a.kind.values().contains(v)).collect();
            assert_eq!(a.choices, same_kind.len());
        }
    }
}

#[test]
fn documents_draw_their_number_of_facts_from_the_range() {
    let l = SyntheticLanguage::new(SyntheticConfig {
        facts: 4,
        min_facts: 2,
        distance: 1,
        lists: 0.5,
        ..SyntheticConfig::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut seen = HashSet::new();
    let mut kinds = HashSet::new();
    for _ in 0..400 {
        let doc = l.document(&mut rng);
        seen.insert(doc.answers.len());
        doc.answers.iter().for_each(|a| {
            kinds.insert(a.list);
        });
    }
    assert_eq!(seen, HashSet::from([2, 3, 4]));
    assert_eq!(kinds.len(), 2, "both lists and stories");
}

#[test]
fn file_corpus_splits_ninety_ten_and_checks_its_size() {
    let tmp = temp_dir("corpus");
    let dir = tmp.path();
    let path = dir.join("data.txt");
    std::fs::write(&path, (0..1000).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>()).unwrap();
    let c = DataConfig { path: Some(path.clone()), ..DataConfig::default() }.corpus(32).unwrap();
    let Corpus::Files { train, val } = &c else { panic!("a file corpus") };
    assert_eq!((train.bytes().len(), val.bytes().len()), (900, 100));
    let batch = c.train_batch(0, 0, 2, 32);
    assert_eq!(batch.tokens.len(), 64);
    assert_eq!(batch.tokens[1], batch.targets[0]);

    let err = DataConfig { path: Some(path), ..DataConfig::default() }.corpus(200).unwrap_err().to_string();
    assert!(err.contains("fewer than one block"), "{err}");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let err = DataConfig { path: Some(empty), ..DataConfig::default() }.corpus(8).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let err =
        DataConfig { path: Some(dir.join("missing.txt")), ..DataConfig::default() }.corpus(8).unwrap_err().to_string();
    assert!(err.contains("missing.txt"), "{err}");
}

/// The built-in language's keys are all the keys a `[data]` section of the
/// built-in corpus writes, so that a page can leave them out for a run on a file.
#[test]
fn the_built_in_keys_are_the_data_sections_own() {
    let table = |data: &DataConfig| -> Vec<String> {
        let written: toml::Table = toml::from_str(&toml::to_string(data).unwrap()).unwrap();
        let mut keys: Vec<String> = written.keys().cloned().collect();
        keys.sort();
        keys
    };
    let mut built_in = DataConfig::BUILT_IN_KEYS.map(String::from).to_vec();
    built_in.sort();
    assert_eq!(table(&DataConfig::default()), built_in);
    let on_file = DataConfig { path: Some("a.txt".into()), ..DataConfig::default() };
    assert_eq!(table(&on_file).len(), built_in.len() + 1);
}

#[test]
fn a_data_section_written_before_lists_keeps_its_corpus() {
    // `facts = 3` used to mean exactly three facts per document, all stories.
    let old: DataConfig = toml::from_str("facts = 3\ndistance = 2\n").unwrap();
    let s = old.synthetic();
    assert_eq!((s.facts, s.min_facts, s.distance, s.lists), (3, 3, 2, 0.0));
    let new: DataConfig = toml::from_str("facts = 4\nmin_facts = 1\ndistance = 1\nlists = 0.75\n").unwrap();
    assert_eq!(new.synthetic(), SyntheticConfig::default());
    // `distractors = 2` alone states exactly two per kind, as it did before a
    // fewest number existed.
    let exact: DataConfig = toml::from_str("facts = 4\ndistance = 1\ndistractors = 2\n").unwrap();
    assert_eq!((exact.synthetic().distractors, exact.synthetic().min_distractors), (2, 2));
}

#[test]
fn a_run_config_without_the_fewest_numbers_is_the_same_run() {
    // A run made before `min_distractors` (or `min_facts`) existed states neither;
    // read back, it is the same run as the preset that states both, so a resumed
    // or cached run is not refused for settings it did not change.
    let preset = RunConfig::resolve("small", &[]).unwrap();
    let text = preset.to_toml();
    let fewest = |l: &str| l.starts_with("min_facts") || l.starts_with("min_distractors");
    let old: String = text.lines().filter(|l| !fewest(l)).map(|l| format!("{l}\n")).collect();
    assert!(
        text.contains("min_distractors") && !old.contains("min_distractors") && !old.contains("min_facts"),
        "{text}"
    );
    let old = RunConfig::from_toml(&old, std::path::Path::new("old.toml"), &[]).unwrap();
    assert_eq!(old.changes(&preset), Vec::<String>::new());
    assert_eq!(preset.changes(&old), Vec::<String>::new());
    // Without the fewest numbers, a document has exactly the most.
    let exact = RunConfig::from_toml(
        &text.replace("min_distractors = 0", "").replace("distractors = 0", "distractors = 2"),
        std::path::Path::new("exact.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(exact.data.min_distractors, Some(2));
}

#[test]
fn distractors_are_bounded_by_the_people_of_the_language() {
    let with = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::resolve("recall", &sets).and_then(|c| c.validate()).map_err(|e| e.to_string())
    };
    assert!(with(&["data.facts=4", "data.distractors=10"]).is_ok());
    let err = with(&["data.facts=5", "data.distractors=10"]).unwrap_err();
    assert!(err.contains("names 24 people"), "{err}");
    let err = with(&["data.distractors=1", "data.min_distractors=2"]).unwrap_err();
    assert!(err.contains("data.min_distractors ≤ data.distractors"), "{err}");
    // A huge number is refused, not wrapped around.
    let err = with(&["data.distractors=9223372036854775807"]).unwrap_err();
    assert!(err.contains("names 24 people"), "{err}");
}

#[test]
fn carried_streams_continue_from_batch_to_batch() {
    let (b, t) = (3, 50);
    let synthetic = Corpus::Synthetic(SyntheticLanguage::new(SyntheticConfig::default()));
    let tmp = temp_dir("streams");
    let path = tmp.path().join("data.txt");
    std::fs::write(&path, (0..4000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect::<Vec<u8>>()).unwrap();
    let file = DataConfig { path: Some(path), ..DataConfig::default() }.corpus(t).unwrap();
    for corpus in [&synthetic, &file] {
        let (first, restart0) = corpus.stream_batch(9, 0, b, t).unwrap();
        assert!(restart0);
        // The next batch continues each row where this one stopped.
        let (next, restart1) = corpus.stream_batch(9, 1, b, t).unwrap();
        assert!(!restart1);
        for row in 0..b {
            let r = row * t..(row + 1) * t;
            assert_eq!(next.tokens[r.start], first.targets[r.end - 1], "row {row} continues");
            assert_eq!(next.tokens[r.start + 1..r.end], next.targets[r.start..r.end - 1], "targets are the next bytes");
        }
        assert_ne!(first.tokens[..t], first.tokens[t..2 * t], "rows read different streams");
    }
    // A file's 3600 training bytes give each row 1200: 23 batches of 50, then it starts over.
    let (_, restart) = file.stream_batch(9, 23, b, t).unwrap();
    assert!(restart);
    let err = file.stream_batch(9, 0, 100, t).unwrap_err().to_string();
    assert!(err.contains("its own part"), "{err}");
    // The built-in streams cross their 16 KiB blocks without a gap in the bytes read.
    let at = (bdh::data::STREAM_BLOCK / t) as u64;
    let (a, _) = synthetic.stream_batch(9, at - 1, 1, t).unwrap();
    let (c, _) = synthetic.stream_batch(9, at, 1, t).unwrap();
    assert_eq!(c.tokens[0], a.targets[t - 1]);
    for (row, ans) in &a.answers {
        assert!(ans.range.end <= t && *row == 0);
    }
}

/// The unigram plateau of a text of 26 letters in turn is ln 26 (every letter as
/// frequent; the add-one smoothing of all 256 byte values over 16 k counted tokens
/// adds about ln(1 + 256/16384) = 0.016), and of a text of one letter, about that.
#[test]
fn the_unigram_loss_is_the_entropy_of_the_byte_frequencies() {
    use bdh::train::compare::unigram_loss;
    let tmp = temp_dir("unigram");
    let letters = tmp.path().join("letters.txt");
    std::fs::write(&letters, (0..26_000).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>()).unwrap();
    let c = DataConfig { path: Some(letters), ..DataConfig::default() }.corpus(32).unwrap();
    let loss = unigram_loss(&c, 4, 8, 32);
    assert!((loss - 26f64.ln()).abs() < 0.025, "{loss} against ln 26 = {}", 26f64.ln());
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, vec![b'z'; 26_000]).unwrap();
    let c = DataConfig { path: Some(one), ..DataConfig::default() }.corpus(32).unwrap();
    let loss = unigram_loss(&c, 4, 8, 32);
    assert!(loss > 0.0 && loss < 0.025, "{loss}");
}
