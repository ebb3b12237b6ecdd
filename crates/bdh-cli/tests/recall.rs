//! Recall is measured against the strategies that bind nothing: `bdh eval` on the
//! built-in corpus reports copying at random, copying a value no earlier answer
//! gave, and the answers where only binding beats chance, with a test.

mod common;

use common::{bdh, golden, temp, text};

#[test]
fn eval_reports_recall_beside_the_strategies_that_bind_nothing() {
    let tmp = temp("recall-eval");
    let json = tmp.path().join("eval.json");
    let o = bdh(&[
        "eval",
        "--model",
        &golden("recall-trained"),
        "--batches",
        "8",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let groups = m["answer_groups"].as_array().unwrap();
    let num = |g: &serde_json::Value, k: &str| g[k].as_f64().unwrap_or_else(|| panic!("{k} in {g}"));
    let total: f64 = groups.iter().map(|g| num(g, "answers")).sum();
    assert_eq!(total, num(&m, "answers"));
    let (mut copy, mut eliminate) = (0.0, 0.0);
    for g in groups {
        let n = num(g, "answers");
        copy += num(g, "copy_baseline") * n / total;
        eliminate += num(g, "eliminate_baseline") * n / total;
        let first = num(g, "first_answers");
        assert!(first >= 1.0 && first <= n, "{g}");
        assert!(num(g, "first_correct") <= first, "{g}");
        let p = num(g, "first_p_value");
        assert!(p > 0.0 && p <= 1.0, "{g}");
        if num(g, "facts") == 1.0 {
            // One fact: one value to copy, and every answer the first of its kind.
            assert_eq!((num(g, "copy_baseline"), num(g, "eliminate_baseline"), first), (1.0, 1.0, n), "{g}");
        } else {
            assert!(
                num(g, "eliminate_baseline") > num(g, "copy_baseline"),
                "elimination helps with several facts: {g}"
            );
            assert!(first < n, "{g}");
        }
    }
    // The headline: the margin over the better strategy, as printed.
    let margin = 100.0 * (num(&m, "answer_accuracy") - f64::max(copy, eliminate));
    let side = if margin >= 0.0 { "above" } else { "below" };
    let want = format!("{:.1}%: {:.1} points {side} the better", 100.0 * eliminate, margin.abs());
    assert!(out.contains(&want), "wanted {want:?} in {out}");
    assert!(out.contains("first of their kind") && out.contains("by chance, p"), "{out}");
}
