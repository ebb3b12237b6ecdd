#!/usr/bin/env python3
"""Regenerates the tables published in docs/, one command per table.

    python3 scripts/tables.py TABLE [--threads 2] [--runs runs/tables] [--jobs 1]

prints TABLE as the docs publish it. Each table trains its runs under
`runs/tables/TABLE/` and reads their results; a run cut short (Ctrl-C, a
reboot) is resumed by the next call, and a finished one is not trained again,
so a long table can be made in pieces. Times and peak memory are printed only
for a run trained from start to end by this call, and depend on the machine and
what else runs on it; losses and accuracies are the same on every call with the
same thread count (the default, 2, is the one the docs were made with).
Needs a built bdh (`target/release/bdh`, `$BDH`, or `bdh` on the PATH) and
Python 3 alone; the tiny-Shakespeare tables need `bdh data fetch` first.

Tables: layer-variants, layer-variants-shakespeare, layer-variants-full and
layer-variants-full-shakespeare (docs/training.md), default-run, facts,
recall-variants (docs/training.md; recall-variants with --threads 1 --jobs 2), decay (docs/training.md),
bpe (docs/training.md), merge (docs/merge.md), compare, compare-m and
compare-shakespeare (docs/compare.md),
mpi (docs/scaling.md), nanogpt-sweep and nanogpt (docs/nanogpt.md). The synapse
mechanisms' tables are `scripts/mechanism_tables.py`'s, the neuron mechanisms'
`scripts/neuron_tables.py`'s.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "tinyshakespeare.txt"
# The thread count the docs' tables were made with (their losses depend on it).
DOCS_THREADS = 2


class Bdh:
    """Runs bdh commands with a fixed thread count, from the repository root."""

    def __init__(self, threads, runs, jobs=1, seeds=None):
        found = os.environ.get("BDH") or (
            str(ROOT / "target/release/bdh") if (ROOT / "target/release/bdh").exists() else shutil.which("bdh")
        )
        if not found:
            sys.exit("no bdh found: build it (cargo build --release), put it on the PATH, or set BDH")
        self.exe = found
        self.threads = str(threads)
        self.runs = Path(runs)
        self.jobs = jobs
        self.seeds = seeds

    def run(self, *args, capture=True):
        """bdh ARGS; its output if `capture`, else shown on standard error (standard
        output is for the table). Exits with bdh's status if it fails."""
        cmd = [self.exe, *map(str, args)]
        print("$ bdh " + " ".join(map(str, args)), file=sys.stderr, flush=True)
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE if capture else sys.stderr, text=True)
        if p.returncode != 0:
            sys.exit(f"bdh {' '.join(map(str, args))} failed with exit status {p.returncode}")
        return p.stdout if capture else ""

    def train(self, out, *args):
        """Trains the run `out` (a name under the runs folder) with ARGS, or resumes it.
        Returns (path, seconds, peak MB) — the last two None unless this call trained
        it from the start to the end."""
        path = self.runs / out
        if (path / "last").exists():
            self.run("train", "--resume", path, "--threads", self.threads, capture=False)
            return path, None, None
        if path.exists():
            sys.exit(f"{path} exists but holds no run: remove it to train it again")
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        self.run("train", *args, "--threads", self.threads, "--out", path, capture=False)
        seconds = time.monotonic() - start
        # ru_maxrss of the children waited for: the largest, in KiB on Linux.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return path, seconds, peak

    def eval_json(self, *args):
        """`bdh eval ARGS --json` as a dict."""
        out = self.runs / "eval.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.run("eval", *args, "--threads", self.threads, "--json", out)
        with open(out) as f:
            return json.load(f)


def loss(r):
    """The mean loss of `bdh eval --json`: `val_loss` on the built-in corpus, `loss` on a file."""
    return r["val_loss"] if "val_loss" in r else r["loss"]


def records(run, key):
    """The metrics records of `run` that have `key`."""
    with open(Path(run) / "metrics.jsonl") as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if key in r]


def percent(x):
    return "100%" if x == 1 else f"{100 * x:.1f}%"


def p_value(p):
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def table(header, rows):
    """A markdown table; columns after the first right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def need_data():
    if not DATA.exists():
        sys.exit(f"{DATA.relative_to(ROOT)} is missing: run `bdh data fetch` first")


def strategy(groups, key):
    """What a strategy that binds nothing (`copy_baseline` or `eliminate_baseline`)
    scores over the answer groups `groups`: the groups' scores weighted by answers."""
    return sum(g[key] * g["answers"] for g in groups) / sum(g["answers"] for g in groups)


def default_run(b):
    """The default run (the recall preset): accuracy and validation loss per evaluation."""
    run, seconds, peak = b.train("default-run")
    evals = records(run, "answer_accuracy")
    table(
        ["step", *(str(e["step"]) for e in evals)],
        [
            ["answer accuracy", *(percent(e["answer_accuracy"]) for e in evals)],
            ["validation loss", *(f"{e['val_loss']:.3f}" for e in evals)],
        ],
    )
    # Every evaluation reads the same held-out batches, so the strategies score alike at each.
    last = evals[-1]["answer_groups"]
    print(f"\non the {sum(g['answers'] for g in last)} answers of each evaluation, copying at random "
          f"scores {percent(strategy(last, 'copy_baseline'))} and copying a value not given yet "
          f"{percent(strategy(last, 'eliminate_baseline'))}")
    if seconds is not None:
        print(f"\nthe whole process: {seconds:.0f} s, {peak:.0f} MB peak")
    return run


def facts(b):
    """The default run's answers by kind of document and number of facts, beside
    the strategies that bind nothing, and on the answers where only binding beats
    chance (the first of their kind in a document)."""
    run, _, _ = b.train("default-run")
    r = b.eval_json("--model", run, "--batches", 32)
    groups = {(g["list"], g["facts"]): g for g in r["answer_groups"]}
    counts = sorted({f for _, f in groups})
    total = r["answers"]
    copy = strategy(r["answer_groups"], "copy_baseline")
    eliminate = strategy(r["answer_groups"], "eliminate_baseline")
    margin = 100 * (r["answer_accuracy"] - max(copy, eliminate))
    print(
        f"{total} answers: accuracy {percent(r['answer_accuracy'])}; copying at random {percent(copy)}, "
        f"copying a value not given yet {percent(eliminate)}: {abs(margin):.1f} points "
        f"{'above' if margin >= 0 else 'below'} the better\n"
    )
    rows = []
    for is_list, kind in [(True, "lists"), (False, "stories")]:
        got = [groups.get((is_list, f)) for f in counts]

        def row(label, value):
            rows.append([f"{kind}: {label}", *("—" if g is None else value(g) for g in got)])

        row("answer accuracy", lambda g: percent(g["correct"] / g["answers"]))
        row("copying at random", lambda g: percent(g["copy_baseline"]))
        row("copying a value not given yet", lambda g: percent(g["eliminate_baseline"]))
        row("first of their kind: accuracy", lambda g: f"{percent(g['first_correct'] / g['first_answers'])} of {g['first_answers']}")
        row("first of their kind: chance", lambda g: percent(g["first_chance"]))
        row("first of their kind: p", lambda g: p_value(g["first_p_value"]))
    table(["facts", *map(str, counts)], rows)


def decay(b):
    """Reading tiny Shakespeare's held-out 10% as one stream, with and without a
    decay and a carried state: 800 steps of the recall preset's model each."""
    need_data()
    variants = [
        ("no decay (bdh.py)", "none", []),
        ("`carry_state`", "carry", ["--set", "training.carry_state=true"]),
        ('`decay = "alibi"`', "alibi", ["--set", "model.decay=alibi"]),
        ("`alibi` and `carry_state`", "alibi-carry", ["--set", "model.decay=alibi", "--set", "training.carry_state=true"]),
    ]
    rows, header = [], None
    for label, name, sets in variants:
        args = ["--data", DATA, "--set", "training.max_steps=800", *sets]
        run, _, _ = b.train(f"decay/{name}", *args)
        r = b.eval_json("--model", run, "--carry")
        buckets = r["stream"]["buckets"]
        if header is None:
            edges = [human_position(k["from"]) + "–" + (human_position(k["to"]) if i + 1 < len(buckets) else "") for i, k in enumerate(buckets)]
            header = ["trained", f"windows of {r['windows']['window']}", "one stream", *edges]
        rows.append([label, f"{r['windows']['loss']:.3f}", f"{r['stream']['loss']:.3f}", *(f"{k['loss']:.2f}" for k in buckets)])
    table(header, rows)


def human_position(n):
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def bpe(b):
    """The tiny preset on tiny Shakespeare as bytes and with a 512-token BPE."""
    need_data()
    tokenizer = b.runs / "bpe" / "ts512.json"
    if not tokenizer.exists():
        tokenizer.parent.mkdir(parents=True, exist_ok=True)
        b.run("tokenizer", "train", "--data", DATA, "--vocab-size", 512, "--out", tokenizer)
    common = ["--preset", "tiny", "--data", DATA, "--set", "training.max_steps=1000", "--set", "training.eval_interval=250"]
    rows = []
    for label, name, extra, unit in [("bytes", "bytes", [], "nats/byte"), ("BPE 512", "bpe512", ["--tokenizer", tokenizer], "nats/token")]:
        run, seconds, _ = b.train(f"bpe/{name}", *common, *extra)
        rate = median([r["tokens_per_second"] for r in records(run, "tokens_per_second")])
        with open(run / "last" / "config.json") as f:
            parameters = parameter_count(json.load(f))
        r = b.eval_json("--model", run, "--block", 160)
        rows.append(
            [
                label,
                f"{parameters / 1e6:.2f} M",
                "—" if seconds is None else f"{seconds:.0f} s",
                f"{rate:,.0f}".replace(",", " "),
                f"{loss(r):.3f} {unit}",
                f"{r['bits_per_byte']:.3f}",
            ]
        )
    table(["tokens", "parameters", "time", "tokens/s (median step)", "held-out loss", "bits/byte"], rows)


def parameter_count(config):
    """BDH's parameters from its config: embed, encoder, encoder_v, decoder, lm_head."""
    m = config.get("model", config)
    d, h, v = m["n_embd"], m["n_head"], m["vocab_size"]
    n = m["mlp_internal_dim_multiplier"] * d // h
    return 2 * v * d + 3 * h * d * n


def merge(b):
    """Two specialists trained from one base, merged, on both kinds of data."""
    need_data()
    base = ROOT / "tests/golden/recall-trained"
    facts_run, _, _ = b.train("merge/facts", "--init-from", base, "--set", "training.max_steps=400")
    text_run, _, _ = b.train("merge/text", "--init-from", base, "--data", DATA, "--set", "training.max_steps=400")
    merged = b.runs / "merge" / "merged"
    if not (merged / "model.safetensors").exists():
        b.run("merge", facts_run, text_run, "--out", merged)
    held_out = b.runs / "merge" / "held-out.txt"
    data = DATA.read_bytes()
    held_out.write_bytes(data[len(data) * 9 // 10 :])
    rows = []
    # Model files, not run directories: a run is scored on what it trained on, a
    # model file on the built-in corpus unless --data says otherwise.
    for label, model in [
        ("base", base / "model.safetensors"),
        ("base → built-in corpus", facts_run / "last" / "model.safetensors"),
        ("base → text", text_run / "last" / "model.safetensors"),
        ("merged (1024 + 1024 neurons per head)", merged / "model.safetensors"),
    ]:
        builtin = b.eval_json("--model", model, "--batches", 32)
        text = b.eval_json("--model", model, "--data", held_out)
        rows.append([label, f"{loss(builtin):.3f}", percent(builtin["answer_accuracy"]), f"{loss(text):.3f}"])
    table(["model", "built-in corpus: loss", "built-in: answer accuracy", "held-out text: loss"], rows)
    r = b.eval_json("--model", text_run, "--carry")
    buckets = ", ".join(f"{human_position(k['from'])}–{human_position(k['to'])}: {k['loss']:.2f}" for k in r["stream"]["buckets"])
    print(f"\nthe text specialist read as one stream (nats/byte by position): {buckets}; independent windows {r['windows']['loss']:.2f}")

# Variants of the default run, each one change or two from it: (name, what it
# changes, the `--set` overrides).
RECALL_VARIANTS = [
    ("default", "none: the default run (the `default-run` table's)", []),
    ("d1", "1 distractor per kind", ["data.distractors=1", "data.min_distractors=1"]),
    ("d0-2", "0 to 2 distractors per kind", ["data.distractors=2", "data.min_distractors=0"]),
    ("d1-stories", "1 distractor, half stories", ["data.distractors=1", "data.min_distractors=1", "data.lists=0.5"]),
    ("d1-lr8", "1 distractor, lr 8e-3", ["data.distractors=1", "data.min_distractors=1", "training.lr=8e-3",
                                         "training.min_lr=8e-4"]),
    ("d1-lr8-h4", "1 distractor, lr 8e-3, 4 heads", ["data.distractors=1", "data.min_distractors=1", "training.lr=8e-3",
                                                     "training.min_lr=8e-4", "model.n_head=4"]),
    ("d1-long", "1 distractor, 3× the steps (7500)", ["data.distractors=1", "data.min_distractors=1",
                                                      "training.max_steps=7500"]),
]


def signed(x, digits):
    """x with its sign, and a minus sign (−) for a negative one, as the docs print it."""
    return f"{x:+.{digits}f}".replace("-", "−")


def margins(groups, is_list):
    """(accuracy, the better strategy that binds nothing, answers) over the groups
    of one kind of document."""
    got = [g for g in groups if g["list"] == is_list]
    n = sum(g["answers"] for g in got)
    if n == 0:
        return None
    acc = sum(g["correct"] for g in got) / n
    best = max(strategy(got, k) for k in ("copy_baseline", "eliminate_baseline"))
    return acc, best, n


def significant(groups, is_list):
    """The numbers of facts at which the first answers of their kind beat copying
    at p < 0.05."""
    got = sorted((g for g in groups if g["list"] == is_list), key=lambda g: g["facts"])
    return ", ".join(str(g["facts"]) for g in got if g["first_p_value"] < 0.05) or "none"


def recall_variants(b):
    """The default run and variants of its corpus and settings, each judged by its
    margin over the better strategy that binds nothing, on lists and on stories."""
    from concurrent.futures import ThreadPoolExecutor

    def one(variant):
        name, _, sets = variant
        if not sets:
            # The `default-run` table's run, made with its thread count whatever this one's.
            return Bdh(DOCS_THREADS, b.runs).train("default-run")
        return b.train(f"recall-variants/{name}", *(a for s in sets for a in ("--set", s)))

    with ThreadPoolExecutor(max_workers=b.jobs) as pool:
        futures = [pool.submit(one, v) for v in RECALL_VARIANTS]
        try:
            trained = [f.result() for f in futures]
        except BaseException:
            # A run that failed (bdh's status) or Ctrl-C: start no other.
            pool.shutdown(cancel_futures=True)
            raise
    rows, curves = [], []
    for (name, what, _), (run, _, _) in zip(RECALL_VARIANTS, trained):
        r = b.eval_json("--model", run, "--batches", 32)
        cells = [f"`{name}`", what]
        for is_list in (True, False):
            m = margins(r["answer_groups"], is_list)
            cells += ["—"] * 3 if m is None else [percent(m[0]), percent(m[1]), signed(100 * (m[0] - m[1]), 1)]
        cells += [significant(r["answer_groups"], True), significant(r["answer_groups"], False)]
        cells.append(str(records(run, "answer_groups")[-1]["step"]))
        rows.append(cells)
        curve = {}
        for e in records(run, "answer_groups"):
            m = [margins(e["answer_groups"], is_list) for is_list in (True, False)]
            curve[e["step"]] = "/".join("—" if x is None else signed(100 * (x[0] - x[1]), 0) for x in m)
        curves.append((name, curve))
    table(["variant", "changes", "lists: accuracy", "lists: better non-binding", "lists: margin",
           "stories: accuracy", "stories: better non-binding", "stories: margin",
           "lists: binding (p < 0.05) at facts", "stories: binding (p < 0.05) at facts", "steps"], rows)
    print("\nmargin over the better non-binding strategy during training, lists/stories, in points "
          "(8 batches per evaluation):\n")
    steps = sorted({step for _, c in curves for step in c if step % 500 == 0})
    table(["variant", *map(str, steps)], [[f"`{n}`", *(c.get(step, "") for step in steps)] for n, c in curves])


# The layer's variants (docs/training.md): label, run name, `--set`s. A layer without
# norms starts from bdh.py's N(0, 0.02²) with vanishing logits; its runs scale the
# embedding and the output head's initialisation (training.init_scale).
NO_NORM = ["model.norm=none", 'training.init_scale={"embed.weight"=50.0,lm_head=5.0}']
LAYER_VARIANTS = [
    ("bdh.py's layer", "bdhpy", []),
    ('`position = "none"`', "position-none", ["model.position=none"]),
    ('`position = "none"`, `decay = "alibi"`', "position-none-alibi", ["model.position=none", 'model.decay="alibi"']),
    ('`residual = "n"`', "residual-n", ["model.residual=n"]),
    ('`norm = "none"`', "norm-none", NO_NORM),
    ("BDH-Normfree (all three), `decay = \"alibi\"`", "normfree-alibi",
     [*NO_NORM, "model.residual=n", "model.position=none", 'model.decay="alibi"']),
]
LAYER_LRS = [3e-4, 1e-3, 3e-3, 1e-2]
LAYER_STEPS = 1000


def layer_run(b, folder, name, sets, lr, shakespeare, extra=()):
    """The held-out loss after the last step of one variant's run at peak rate `lr`
    (None where training diverged)."""
    args = [a for s_ in sets for a in ("--set", s_)]
    args += ["--set", f"training.lr={lr:g}", "--set", f"training.min_lr={lr / 10:g}", *extra]
    if shakespeare:
        args += ["--data", DATA]
    try:
        run, _, _ = b.train(f"{folder}/{name}", *args)
        return records(run, "val_loss")[-1]["val_loss"]
    except SystemExit as e:
        # bdh stops a run whose loss is not finite with exit status 4: record it
        if "exit status 4" not in str(e.code):
            raise
        shutil.rmtree(b.runs / folder / name, ignore_errors=True)
        return None


def layer_sweep(b, shakespeare):
    """Each variant's row of the short sweep: its label, the loss at each rate, and
    its best (loss, rate) or None."""
    if shakespeare:
        need_data()
    folder = "layer-variants-shakespeare" if shakespeare else "layer-variants"
    short = ["--set", f"training.max_steps={LAYER_STEPS}", "--set", "training.eval_interval=250"]
    rows = []
    for label, name, sets in LAYER_VARIANTS:
        vals = [layer_run(b, folder, f"{name}-lr{lr:g}", sets, lr, shakespeare, short) for lr in LAYER_LRS]
        done = [(v, lr) for v, lr in zip(vals, LAYER_LRS) if v is not None]
        rows.append((label, name, sets, vals, min(done) if done else None))
    return rows


def layer_variants(b, shakespeare=False):
    """Each variant of the layer at the recall preset's size, 1000 steps, four peak
    learning rates: the held-out loss of each (— where training diverged)."""
    rows = []
    for label, _, _, vals, best in layer_sweep(b, shakespeare):
        cells = [label, *("—" if v is None else f"{v:.4f}" for v in vals)]
        cells.append("—" if best is None else f"{best[0]:.4f} (lr {best[1]:g})")
        rows.append(cells)
    base = float(rows[0][-1].split()[0])
    for r in rows:
        r.append("—" if r[-1] == "—" else signed(float(r[-1].split()[0]) - base, 4))
    unit = "nats per byte, tiny Shakespeare's held-out 10%" if shakespeare else "nats per byte, the built-in corpus"
    print(f"held-out loss ({unit}), recall preset's model, {LAYER_STEPS} steps:\n")
    table(["layer", *(f"lr {lr:g}" for lr in LAYER_LRS), "best", "best − bdh.py's"], rows)


LAYER_SEEDS = [1337, 1, 2]


def layer_variants_full(b, shakespeare=False):
    """Each variant at the rate its short sweep chose, trained for the recall preset's
    whole budget with three seeds (or --seeds): the held-out loss, mean ± half
    range, and its margin over bdh.py's layer."""
    folder = "layer-variants-full-shakespeare" if shakespeare else "layer-variants-full"
    seeds = b.seeds or LAYER_SEEDS
    rows, base = [], None
    for label, name, sets, _, best in layer_sweep(b, shakespeare):
        if best is None:
            rows.append([label, "—", "—", "—", "—"])
            continue
        lr = best[1]
        vals = [layer_run(b, folder, f"{name}-seed{seed}", sets, lr, shakespeare, ["--set", f"training.seed={seed}"])
                for seed in seeds]
        got = [v for v in vals if v is not None]
        mean = sum(got) / len(got) if got else None
        if base is None:
            base = mean
        rows.append([
            label,
            f"{lr:g}",
            ", ".join("diverged" if v is None else f"{v:.4f}" for v in vals),
            "—" if mean is None else f"{mean:.4f} ± {(max(got) - min(got)) / 2:.4f}",
            "—" if mean is None or base is None else signed(mean - base, 4),
        ])
    unit = "nats per byte, tiny Shakespeare's held-out 10%" if shakespeare else "nats per byte, the built-in corpus"
    print(f"held-out loss ({unit}), recall preset's model and budget:\n")
    table(["layer", "peak lr (from the sweep)", "seeds " + ", ".join(map(str, seeds)), "mean ± half range",
           "mean − bdh.py's"], rows)


def compare(b):
    """`bdh compare` with its defaults: BDH and the GPT at three sizes."""
    out = b.runs / "compare"
    b.run("compare", "--threads", b.threads, "--out", out, capture=False)
    print((out / "table.md").read_text(), end="")


def compare_m(b):
    """`bdh compare` on the built-in corpus at size m, each family's grid shrunk to the
    three rates around its choice at xs and s."""
    out = b.runs / "compare-m"
    b.run("compare", "--threads", b.threads, "--sizes", "m", "--bdh-rates", "4e-3,8e-3,1.6e-2", "--gpt-rates",
          "4e-3,1e-2,2e-2", "--out", out, capture=False)
    print((out / "table.md").read_text(), end="")


def compare_shakespeare(b):
    """`bdh compare` on tiny Shakespeare at sizes xs and s, twice the default budget
    (683 steps)."""
    need_data()
    out = b.runs / "compare-shakespeare"
    # The path as the README gives it: a compare's runs record it, and are continued only with the same.
    b.run("compare", "--threads", b.threads, "--data", DATA.relative_to(ROOT), "--sizes", "xs,s", "--tokens", "1400000", "--out", out,
          capture=False)
    print((out / "table.md").read_text(), end="")


def mpi(b):
    """Config S on 1 process × 2 threads against 2 processes × 1 thread (global
    batch 8 × 256 either way), 40 steps each; needs bdh built with `--features mpi`
    and `mpirun`. Times only: every call trains afresh."""
    mpirun = shutil.which("mpirun")
    if not mpirun:
        sys.exit("no mpirun on the PATH (apt-get install openmpi-bin libopenmpi-dev)")
    s = ["--preset", "small", "--set", "training.max_steps=40", "--set", "training.eval_interval=1000", "--set", "training.eval_batches=1", "--quiet"]
    rows = []
    for label, launch, extra, threads in [
        ("1 process × 2 threads", [], [], 2),
        ("2 processes × 1 thread", [mpirun, "--allow-run-as-root", "-np", "2"], ["--set", "training.batch_size=4"], 1),
    ]:
        out = b.runs / "mpi" / label.split()[0]
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*launch, b.exe, "train", *s, *extra, "--threads", str(threads), "--out", str(out)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        if subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed (is bdh built with --features mpi?)")
        steps = records(out, "tokens_per_second")[1:-1]  # the first warms up; the last evaluates
        rate = median([r["tokens_per_second"] for r in steps])
        if launch:
            waits = [r["all_reduce_seconds"] for r in steps]
            share = sum(w / r["step_seconds"] for w, r in zip(waits, steps)) / len(steps)
            rows.append([label, f"{rate:.0f}", f"{1000 * median(waits):.1f} ms", percent(share)])
        else:
            rows.append([label, f"{rate:.0f}", "—", "—"])
    table(["", "tokens/s (median of steps)", "all-reduce per step (median)", "share of step time waiting (mean)"], rows)


# Each family's rates: the GPT's best lay at the top of the first grid, so it goes on.
NANOGPT_RATES = {"gpt": [5e-4, 1e-3, 2e-3, 4e-3, 8e-3], "bdh": [5e-4, 1e-3, 2e-3, 4e-3]}


def nanogpt_run(b, family, lr, seed=1337):
    """`{family}-nanogpt` on tiny Shakespeare at peak learning rate `lr` (to lr/10):
    the run and its loss on the whole held-out 10% in windows of 64."""
    run, seconds, _ = b.train(
        f"nanogpt/{family}-lr{lr:g}-seed{seed}",
        "--preset", f"{family}-nanogpt", "--data", DATA,
        "--set", f"training.lr={lr:g}", "--set", f"training.min_lr={lr / 10:g}", "--set", f"training.seed={seed}",
    )  # fmt: skip
    return run, seconds, b.eval_json("--model", run, "--block", 64)


def swept(b, family):
    """(rate, held-out loss) of each rate of `family`'s sweep, one seed."""
    return [(lr, loss(nanogpt_run(b, family, lr)[2])) for lr in NANOGPT_RATES[family]]


def nanogpt_sweep(b):
    """Both nanoGPT presets at several peak learning rates, one seed: the loss on
    the whole held-out 10% (nats/byte), to choose each family's rate."""
    need_data()
    results = {f: dict(swept(b, f)) for f in ["gpt", "bdh"]}
    rates = sorted(set(NANOGPT_RATES["gpt"]) | set(NANOGPT_RATES["bdh"]))
    cell = lambda f, lr: f"{results[f][lr]:.4f}" if lr in results[f] else "—"
    table(["peak lr", "GPT (gpt-nanogpt)", "BDH (bdh-nanogpt)"], [[f"{lr:g}", cell("gpt", lr), cell("bdh", lr)] for lr in rates])


def nanogpt(b):
    """nanoGPT's CPU recipe on tiny Shakespeare as it is, the GPT again at the rate
    its sweep chose, and BDH beside them at its preset's (swept) rate; three seeds
    each: loss on the whole held-out 10%."""
    need_data()
    rows = []
    best_gpt = min(swept(b, "gpt"), key=lambda r: r[1])[0]
    preset_lr = lambda preset: float(
        next(l for l in (ROOT / "configs" / f"{preset}.toml").read_text().splitlines() if l.startswith("lr = ")).split("=")[1]
    )
    for family, label, lr in [
        ("gpt", "`gpt-nanogpt` (nanoGPT's recipe)", preset_lr("gpt-nanogpt")),
        ("gpt", "`gpt-nanogpt` at the GPT's swept rate", best_gpt),
        ("bdh", "`bdh-nanogpt`", preset_lr("bdh-nanogpt")),
    ]:
        losses, times = [], []
        for seed in [1337, 1, 2]:
            _, seconds, r = nanogpt_run(b, family, lr, seed)
            losses.append(loss(r))
            times.append(seconds)
        mean = sum(losses) / len(losses)
        spread = (max(losses) - min(losses)) / 2
        timed = [t for t in times if t is not None]
        rows.append(
            [
                label,
                f"{lr:g}",
                f"{mean:.4f} ± {spread:.4f}",
                ", ".join(f"{l:.4f}" for l in losses),
                f"{median(timed):.0f} s" if timed else "—",
            ]
        )
    table(["run", "peak lr", "held-out loss (mean ± half range)", "seeds 1337, 1, 2", "time per run"], rows)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


TABLES = {"layer-variants": layer_variants, "layer-variants-shakespeare": lambda b: layer_variants(b, True),
          "layer-variants-full": layer_variants_full,
          "layer-variants-full-shakespeare": lambda b: layer_variants_full(b, True),
          "default-run": default_run, "facts": facts, "recall-variants": recall_variants, "decay": decay, "bpe": bpe, "merge": merge, "compare": compare,
          "compare-m": compare_m, "compare-shakespeare": compare_shakespeare, "mpi": mpi,
          "nanogpt-sweep": nanogpt_sweep, "nanogpt": nanogpt}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="tables: " + ", ".join(TABLES))
    p.add_argument("table", choices=TABLES)
    p.add_argument("--threads", type=int, default=DOCS_THREADS, help="worker threads (the docs' tables: 2)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "tables"), help="where the runs are kept")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once by the tables of several runs (recall-variants: made with --threads 1 --jobs 2)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                   help="the seeds of the tables that take several, comma-separated (layer-variants-full: 1337,1,2)")
    a = p.parse_args()
    if a.jobs < 1 or a.threads < 1:
        p.error("--threads and --jobs must be at least 1")
    TABLES[a.table](Bdh(a.threads, Path(a.runs), a.jobs, a.seeds))


if __name__ == "__main__":
    main()
