#!/usr/bin/env python3
"""The tables of docs/mechanisms.md: each synapse mechanism on the task meant for it
(answer accuracy) or on tiny Shakespeare (held-out loss), beside bdh.py's layer and
ALiBi's decay, at the recall preset's size, equal steps, three seeds (or --seeds),
every run cached in its own folder, so a table can be made in pieces.

    python3 scripts/mechanism_tables.py tasks|shakespeare [--threads 2] [--runs runs/tables] [--seeds 1337,1,2]

`shakespeare` needs data/tinyshakespeare.txt (`bdh data fetch`).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import DOCS_THREADS, LAYER_SEEDS, ROOT, Bdh, layer_run, need_data, records, table  # noqa: E402

# The synapse mechanisms (docs/mechanisms.md): label, run name, `--set`s; and the
# tasks each is meant for (with bdh.py's layer and ALiBi's decay as the baselines).
MECH_MODELS = [
    ("bdh.py's layer", "bdhpy", []),
    ('`decay = "alibi"`', "alibi", ['model.decay="alibi"']),
    ('`decay = "learned"`', "decay-learned", ["model.decay=learned"]),
    ('`decay = "learned"`, `decay_per = "neuron"`', "decay-neuron", ["model.decay=learned", "model.decay_per=neuron"]),
    ('`delays = "learned:64"`', "delays-learned", ['model.delays="learned:64"']),
    ('`trace = "learned"`', "trace-learned", ["model.trace=learned"]),
    ("`astrocyte = { alpha = 0.99 }`", "astrocyte", ["model.astrocyte={alpha=0.99}"]),
]
# (at the recall preset's budget, one seed, lr 0.003, bdh.py's layer solves dms:8, dms:64 and
# dms:80, lag:16 and lag:64, parity:3 to ≥ 98%, and stays at chance at dms:88, dms:96, dms:120,
# lag:80, lag:96 and lag:120; at lag:72 it is at 26% after 1000 steps, chance 6%: the edges)
MECH_TASKS = {
    "dms:88": ["decay-learned", "decay-neuron", "astrocyte"],
    "lag:72": ["delays-learned", "trace-learned"],
}
MECH_LRS = [1e-3, 3e-3]
# (on tiny Shakespeare one rate: bdh.py's layer's best at this size, 0.001, within 0.001
# of 0.003 in docs/training.md's sweep)
MECH_SHAKESPEARE_LR = 1e-3
MECH_STEPS = 1000


def mech_run(b, folder, name, sets, lr, seed, task=None):
    """(held-out loss, answer accuracy) of one mechanism's run: on `task`, or on tiny
    Shakespeare (accuracy None); None where training diverged."""
    extra = ["--set", f"training.max_steps={MECH_STEPS}", "--set", "training.eval_interval=250",
             "--set", f"training.seed={seed}"]
    if task:
        extra += ["--set", f"data.task={task}"]
    val = layer_run(b, folder, f"{name}-lr{lr:g}-seed{seed}", sets, lr, task is None, extra)
    if val is None:
        return None
    last = records(b.runs / folder / f"{name}-lr{lr:g}-seed{seed}", "val_loss")[-1]
    # (with a retention per neuron, `retention` holds each head's median)
    return val, last.get("answer_accuracy"), last.get("retention"), last.get("delays")


def mechanisms(b, shakespeare=False):
    """Each mechanism on the task meant for it (answer accuracy) or on tiny Shakespeare
    (held-out loss), beside bdh.py's layer and ALiBi's decay: the recall preset's model,
    MECH_STEPS steps; on a task each at the better of MECH_LRS by one seed (1337), on
    tiny Shakespeare at MECH_SHAKESPEARE_LR; then the seeds (1337, 1, 2, or --seeds) at
    that rate: mean ± half range."""
    seeds = b.seeds or LAYER_SEEDS
    jobs = [(None, [m for m in MECH_MODELS])] if shakespeare else [
        (task, [m for m in MECH_MODELS if m[1] in ("bdhpy", "alibi", *names)]) for task, names in MECH_TASKS.items()]
    if shakespeare:
        need_data()
    for task, models in jobs:
        folder = f"mechanisms/{(task or 'shakespeare').replace(':', '')}"
        score = (lambda r: r[0]) if task is None else (lambda r: -r[1])
        rows = []
        for label, name, sets in models:
            rates = [MECH_SHAKESPEARE_LR] if shakespeare else MECH_LRS
            tried = [(mech_run(b, folder, name, sets, lr, 1337, task), lr) for lr in rates]
            fine = [(score(r), lr) for r, lr in tried if r is not None]
            if not fine:
                rows.append([label, "—", "diverged at every rate"])
                continue
            lr = min(fine)[1]
            got = [mech_run(b, folder, name, sets, lr, seed, task) for seed in seeds]
            vals = [(r[0] if task is None else 100 * r[1]) for r in got if r is not None]
            mean, half = sum(vals) / len(vals), (max(vals) - min(vals)) / 2
            unit, places = ("", 3) if task is None else ("%", 2)
            cells = ", ".join("diverged" if r is None else f"{(r[0] if task is None else 100 * r[1]):.{places}f}{unit}"
                              for r in got)
            # what it learned, seed by seed: each head's timescale 1/(1 − γ) (its neurons'
            # median with a retention per neuron) and delay δ
            learned = "; ".join(
                ", ".join([*(f"{1 / (1 - g):.1f}" for g in (r[2] or []) if g < 1), *(f"δ {x:.1f}" for x in (r[3] or []))])
                for r in got if r is not None and (r[2] or r[3]))
            rows.append([label, f"{lr:g}", f"{mean:.{places}f}{unit} ± {half:.{places}f}", cells, learned or "—"])
        what = "held-out loss, nats per byte, tiny Shakespeare" if task is None else f"answer accuracy on `{task}`"
        print(f"\n{what} (recall preset's model, {MECH_STEPS} steps, seeds {', '.join(map(str, seeds))}):\n")
        table(["model", "peak lr", "mean ± half range", "per seed", "learned timescales 1/(1 − γ), delays"], rows)



if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=["tasks", "shakespeare"])
    p.add_argument("--threads", type=int, default=DOCS_THREADS)
    p.add_argument("--runs", default=str(ROOT / "runs" / "tables"))
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")])
    a = p.parse_args()
    mechanisms(Bdh(a.threads, Path(a.runs), 1, a.seeds), a.table == "shakespeare")
