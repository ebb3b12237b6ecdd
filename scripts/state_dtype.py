#!/usr/bin/env python3
"""The table of docs/generate-and-eval.md on `--state-dtype`: what storing the synapse
state in 16 bits costs in quality, for the trained fixtures and a decaying model.

    python3 scripts/state_dtype.py [--threads 2] [--runs runs/tables] [--bytes 32768]

For each model and type: the loss of the first BYTES bytes of tiny Shakespeare read as
one stream (`bdh eval --carry`; a 16-bit state is stepped token by token, as decoding
steps it) and greedy decoding's agreement with f32 over 1000 tokens (`bdh bench generate
--agreement 1000`). The decaying model (the tiny preset with retentions 0.8 and 0.95 a
token, 600 steps of tiny Shakespeare; ALiBi's slowest heads fade more slowly than 16 bits
resolve, and are refused) is trained under the runs folder, and reused. Needs data/tinyshakespeare.txt
(`bdh data fetch`).
"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import DATA, DOCS_THREADS, ROOT, Bdh, need_data, table  # noqa: E402

DTYPES = ["f32", "bf16", "f16"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=DOCS_THREADS)
    p.add_argument("--runs", default="runs/tables")
    p.add_argument("--bytes", type=int, default=32768)
    a = p.parse_args()
    need_data()
    b = Bdh(a.threads, Path(a.runs))
    text = b.runs / "state-dtype" / "text.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_bytes(DATA.read_bytes()[: a.bytes])
    decay, _, _ = b.train("state-dtype/decay", "--preset", "tiny", "--data", DATA, "--set",
                          "model.decay=[0.8, 0.95]", "--set", "training.max_steps=600")
    models = [("ref-small-trained (bdh.py's, trained)", ROOT / "tests/golden/ref-small-trained"),
              ("recall-trained", ROOT / "tests/golden/recall-trained"),
              ("decay 0.8 / 0.95, tiny preset", decay)]
    rows = []
    for label, model in models:
        losses, early = {}, {}
        for dtype in DTYPES:
            r = b.eval_json("--model", model, "--data", text, "--carry", "--state-dtype", dtype)
            losses[dtype] = r["stream"]["loss"]
            first = [k for k in r["stream"]["buckets"] if k["to"] <= 1024]
            early[dtype] = sum(k["loss"] * k["tokens"] for k in first) / sum(k["tokens"] for k in first)
        row = [label, " / ".join(f"{early[d]:.4f}" for d in DTYPES), f"{losses['f32']:.4f}"]
        for dtype in DTYPES[1:]:
            out = b.run("bench", "generate", "--model", model, "--state-dtype", dtype, "--tokens", "1",
                        "--long-context", "256", "--agreement", "1000", "--threads", b.threads)
            # "greedy over 1000 tokens, bf16 against f32: the same 1000 tokens before the first
            # difference; reading f32's text, the same next token at 100.0% of positions"
            m = re.search(r"the same (\d+) tokens before the first difference; .* at ([\d.]+)% of positions", out)
            row += [f"{losses[dtype]:.4f} ({losses[dtype] - losses['f32']:+.4f})", f"{m.group(1)} / {m.group(2)}%"]
        rows.append(row)
    print(f"\nloss of the first 1024 and of all {a.bytes} bytes of tiny Shakespeare read as one stream (nats/byte), "
          "and greedy decoding against f32's over 1000 tokens: tokens alike before the first difference / positions "
          "where, reading f32's text, the next token is f32's:\n")
    table(["model", "first 1k: f32 / bf16 / f16", "f32 loss", "bf16 loss", "bf16 greedy", "f16 loss", "f16 greedy"],
          rows)


if __name__ == "__main__":
    main()
