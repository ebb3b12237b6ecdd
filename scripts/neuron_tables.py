#!/usr/bin/env python3
"""The tables of docs/neurons.md: each neuron mechanism against bdh.py's model at the
recall preset's size, equal steps, three seeds (or --seeds), every run cached in its own
folder, so a table can be made in pieces; what the tables read of each finished run is kept
in scripts/results/neurons.json, so a table interrupted on one machine is completed on
another without training its finished runs again.

    python3 scripts/neuron_tables.py TABLE [--threads 2] [--runs runs/tables] [--seeds 1337,1,2]

TABLE is one of: thresholds (firing reached, loss, the sparse step's speed), norm
(`norm = "ei"` against LayerNorm and none: loss, stability at a tenfold rate, activity),
connectivity (loss and the neuron graph's modularity against density, with and without
rewiring), lowrank (loss, the weights' relative change and effective rank from a rank-r
start), continual (forgetting of the built-in corpus after tiny Shakespeare, plain
against `--continual hlop:k`; needs data/tinyshakespeare.txt: `bdh data fetch`).
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import DATA, DOCS_THREADS, LAYER_SEEDS, Bdh, layer_run, need_data, records, table  # noqa: E402

STEPS = 1000  # of the recall preset's 2500, as the synapse mechanisms' table
RESULTS = Path(__file__).resolve().parent / "results" / "neurons.json"
LR = 1e-3  # bdh.py's rate at the recall preset (docs/training.md's sweep), for every row


def run(b, folder, name, sets, seed, extra=()):
    """The run `folder/name-seedS` of the recall preset with `sets`, trained (or resumed).
    Every run keeps its models every 250 steps (which changes no step), so bdh.py's model
    is one run per seed, `neurons/base-seedS`, shared by the tables."""
    args = ["--preset", "recall", *extra]
    for s in [*sets, f"training.max_steps={STEPS}", "training.eval_interval=250", f"training.seed={seed}",
              f"training.lr={LR:g}", f"training.min_lr={LR / 10:g}", "training.keep_every=250"]:
        args += ["--set", s]
    path, _, _ = b.train(f"{folder}/{name}-seed{seed}", *args)
    return path


def base(b, seed):
    """bdh.py's model at the tables' budget (the run every table compares with)."""
    return run(b, "neurons", "base", [], seed)


def measured(key, measure):
    """`measure()` of the finished run `key` (with the budget in the key), from
    RESULTS if an earlier call recorded it, else measured now and recorded."""
    key = f"{key} steps={STEPS} lr={LR:g}"
    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if key not in done:
        done[key] = measure()
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
    return done[key]


def spread(values, unit=""):
    """mean ± half range, and the values seed by seed."""
    mean, half = sum(values) / len(values), (max(values) - min(values)) / 2
    return f"{mean:.3f}{unit} ± {half:.3f}", ", ".join(f"{v:.3f}" for v in values)


def json_of(b, *args):
    """`bdh ARGS --json FILE` as a dict."""
    out = b.runs / "neurons.json"
    b.run(*args, "--threads", b.threads, "--json", out)
    with open(out) as f:
        return json.load(f)


def thresholds(b, seeds):
    rows = []
    for label, name, sets in [
        ("none (bdh.py)", None, []),
        ('`"learned"`', "learned", ["model.threshold=learned"]),
        ("`{ target = 0.05 }`", "target05", ["model.threshold={target=0.05}"]),
        ("`{ target = 0.05, gain = true }`", "target05-gain", ["model.threshold={target=0.05, gain=true}"]),
    ]:
        losses, fires, speeds = [], [], []
        for seed in seeds:
            def measure():
                path = base(b, seed) if name is None else run(b, "neurons/thresholds", name, sets, seed)
                sp = json_of(b, "inspect", "sparsity", "--model", path, "--text", DATA)
                bench = b.run("bench", "generate", "--model", path, "--tokens", "256", "--long-context", "512",
                              "--threads", b.threads)
                # "step at context 256: sparse 0.038 ms (26070 tokens/s), dense 0.047 ms; sparse is 1.22× faster"
                step = re.search(r"sparse [\d.]+ ms \((\d+) tokens/s\).*sparse is ([\d.]+)× faster", bench)
                return {"loss": records(path, "val_loss")[-1]["val_loss"],
                        "fire": 100 * sum(layer["all"]["x"] for layer in sp["layers"]) / len(sp["layers"]),
                        "speed": [float(step.group(1)), float(step.group(2))]}
            m = measured(f"thresholds/{name or 'base'}-seed{seed}", measure)
            losses.append(m["loss"])
            fires.append(m["fire"])
            speeds.append(m["speed"])
        mean = lambda xs: sum(xs) / len(xs)
        speed = f"{mean([s[0] for s in speeds]):.0f} ({mean([s[1] for s in speeds]):.2f}× the dense step)"
        rows.append([label, *spread(losses), spread(fires, "%")[0], speed])
    print(f"\nthe built-in corpus, recall preset, {STEPS} steps, lr {LR:g}, seeds {seeds}; x's firing on tiny "
          "Shakespeare's text (mean over layers); the sparse recurrent step at context 256, tokens/s and its speed-up "
          "over the dense step (means over seeds; whole runs of `bdh bench generate`, on an idle machine):\n")
    table(["threshold", "held-out loss", "per seed", "x fires", "sparse step tokens/s"], rows)


def norm(b, seeds):
    need_data()
    rows = []
    for label, name, sets in [("`\"layer\"` (bdh.py)", "layer", []), ('`"none"`', "none", ["model.norm=none"]),
                              ('`"ei"`', "ei", ["model.norm=ei"])]:
        for lr in (LR, 10 * LR):
            losses, grads, fires = [], [], []
            for seed in seeds:
                extra = ["--set", f"training.max_steps={STEPS}", "--set", "training.eval_interval=250", "--set",
                         f"training.seed={seed}"]
                run_name = f"{name}-lr{lr:g}-seed{seed}"
                losses.append(layer_run(b, "neurons/norm", run_name, sets, lr, False, extra))
                if losses[-1] is None:
                    continue
                path = b.runs / "neurons/norm" / run_name
                grads.append(max(r["grad_norm"] for r in records(path, "grad_norm")))
                sp = json_of(b, "inspect", "sparsity", "--model", path, "--text", DATA)
                layers = sp["layers"]
                fires.append([100 * sum(layer["all"][k] for layer in layers) / len(layers) for k in ("x", "xy")])
            fine = [v for v in losses if v is not None]
            cells = ", ".join("diverged" if v is None else f"{v:.3f}" for v in losses)
            if not fine:
                rows.append([label, f"{lr:g}", "—", cells, "—", "—"])
                continue
            mean = lambda xs: sum(xs) / len(xs)
            rows.append([label, f"{lr:g}", spread(fine)[0], cells, f"{max(grads):.2f}",
                         f"{mean([f[0] for f in fires]):.1f}% / {mean([f[1] for f in fires]):.1f}%"])
    print(f"\nthe built-in corpus, recall preset, {STEPS} steps, seeds {seeds}, at bdh.py's rate and ten times it; "
          "the largest gradient norm of any step (before clipping at 1), and the fraction of x and of x ⊙ y that fire "
          "on tiny Shakespeare's text (means over layers and seeds):\n")
    table(["norm", "peak lr", "held-out loss", "per seed", "largest gradient norm", "x / x ⊙ y fire"], rows)


def connectivity(b, seeds):
    rows = []
    for label, name, sets in [
        ("dense (bdh.py)", None, []),
        ("M 4, p 0.25", "m4-p25", ["model.connectivity={modules=4, density=0.25}"]),
        ("M 4, p 0.25, rewired", "m4-p25-rewire",
         ["model.connectivity={modules=4, density=0.25}", "training.rewire={every=100, fraction=0.1}"]),
        ("M 8, p 0.125", "m8-p12", ["model.connectivity={modules=8, density=0.125}"]),
    ]:
        losses, qs = [], []
        for seed in seeds:
            def measure():
                path = base(b, seed) if name is None else run(b, "neurons/connectivity", name, sets, seed)
                g = json_of(b, "inspect", "graph", "--model", path)
                q = [s["model"]["modularity"] for head in g["heads"] for s in head["sweep"] if s["quantile"] == 0.99]
                return {"loss": records(path, "val_loss")[-1]["val_loss"], "modularity": sum(q) / len(q)}
            m = measured(f"connectivity/{name or 'base'}-seed{seed}", measure)
            losses.append(m["loss"])
            qs.append(m["modularity"])
        rows.append([label, *spread(losses), spread(qs)[0]])
    print(f"\nthe built-in corpus, recall preset, {STEPS} steps, lr {LR:g}, seeds {seeds}; modularity Q of the "
          "neuron graph at its 0.99 quantile (mean over heads):\n")
    table(["connectivity", "held-out loss", "per seed", "modularity Q"], rows)


def lowrank(b, seeds):
    rows = []
    for label, name, sets in [("normal (bdh.py)", None, []), *[
            (f"`lowrank:{r}`", f"rank{r}", [f"training.init=lowrank:{r}"]) for r in (1, 16)]]:
        losses, changes, ranks = [], [], []
        for seed in seeds:
            def measure():
                path = base(b, seed) if name is None else run(b, "neurons/lowrank", name, sets, seed)
                last = records(path, "weights")[-1]
                return {"loss": last["val_loss"],
                        "change": sum(w["relative_change"] for w in last["weights"]) / 3,
                        "rank": sum(w["effective_rank"] for w in last["weights"]) / 3}
            m = measured(f"lowrank/{name or 'base'}-seed{seed}", measure)
            losses.append(m["loss"])
            changes.append(m["change"])
            ranks.append(m["rank"])
        rows.append([label, *spread(losses), spread(changes)[0], spread(ranks)[0]])
    print(f"\nthe built-in corpus, recall preset, {STEPS} steps, lr {LR:g}, seeds {seeds}; the three layer "
          "matrices' mean relative change from the start and mean effective rank at the end:\n")
    table(["start", "held-out loss", "per seed", "‖W − W₀‖ / ‖W₀‖", "effective rank"], rows)


def continual(b, seeds):
    need_data()
    rows = []
    for label, name, extra in [("plain fine-tuning", "plain", []), *[
            (f"`hlop:{k}`", f"hlop{k}", ["--continual", f"hlop:{k}"]) for k in (32, 128)]]:
        on_a, on_b = [], []
        for seed in seeds:
            def measure():
                a = base(b, seed)
                path = run(b, "neurons/continual", f"b-{name}", [], seed, ["--init-from", a, "--data", DATA, *extra])
                return {"on_a": json_of(b, "eval", "--model", path, "--task", "language")["val_loss"],
                        "on_b": records(path, "val_loss")[-1]["val_loss"]}
            m = measured(f"continual/b-{name}-seed{seed}", measure)
            on_a.append(m["on_a"])
            on_b.append(m["on_b"])
        rows.append([label, *spread(on_a), spread(on_b)[0]])
    before = [measured(f"continual/a-seed{s}", lambda s=s: json_of(b, "eval", "--model", base(b, s), "--task",
                                                                   "language")["val_loss"]) for s in seeds]
    rows.insert(0, ["A, before B", *spread(before), "—"])
    print(f"\nA: the built-in corpus, B: tiny Shakespeare from A, each {STEPS} steps of the recall preset, lr "
          f"{LR:g}, seeds {seeds}; held-out loss on each:\n")
    table(["B trained", "loss on A", "per seed", "loss on B"], rows)


TABLES = {"thresholds": thresholds, "norm": norm, "connectivity": connectivity, "lowrank": lowrank, "continual": continual}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--threads", type=int, default=DOCS_THREADS)
    p.add_argument("--runs", default="runs/tables")
    p.add_argument("--seeds", default=",".join(map(str, LAYER_SEEDS)))
    a = p.parse_args()
    TABLES[a.table](Bdh(a.threads, Path(a.runs)), [int(s) for s in a.seeds.split(",")])
