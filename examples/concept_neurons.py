"""Find the neurons of a concept in the shipped recall model, watch them fire, remove
them, and plot how the model's answers fall against removing random neurons.

    pip install ./python            # once (add matplotlib for the plot)
    python examples/concept_neurons.py [--model tests/golden/recall-trained] [--plot curve.png]

The recall model reads short stories that state facts ("Ann lives in Paris.") and
answers questions about them later in its context; `concept="place"` ranks every
neuron by how much more it fires on place statements than on colour statements.
"""

import argparse
import random

import numpy as np

import bdh


# Some of the built-in language's names, places and colours.
NAMES = "ada bo cy dee eli fay gus hal ivy jo kit lu max ned oz pia".split()
PLACES = "paris lima oslo cairo delhi tokyo rome quito kyiv seoul".split()
COLORS = "red tan blue green gold grey pink black white teal".split()


def accuracy(score, kind):
    """The share of `kind`'s answers a score got right."""
    k = next(k for k in score["kinds"] if k["kind"] == kind)
    return k["correct"] / max(k["answers"], 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tests/golden/recall-trained")
    p.add_argument("--plot", default="concept-curve.png", help="where the curve goes (needs matplotlib)")
    p.add_argument("--top", type=int, default=128, help="remove up to this many neurons")
    a = p.parse_args()

    model = bdh.load(a.model)
    print(model)

    # 1. The neurons most selective for places (the same numbers as `bdh inspect ablate --concept place`).
    report = model.ablate(concept="place", top=a.top, rows=32)
    kind = report["concept_kind"]
    top = report["most_selective"][:8]
    print(f"\nmost selective for {kind} (Cohen's d, mean activation on {kind} statements vs colour ones):")
    for s in top:
        n = s["id"]
        print(f"  layer {n['layer']} head {n['head']} neuron {n['neuron']:5d}   d = {s['selectivity']:5.2f}   "
              f"{s['concept']:.3f} vs {s['background']:.3f}")

    # 2. Watch the top one fire, token by token, on a place statement and a colour statement.
    best = top[0]["id"]
    for text in ["ada lives in oslo.", "ada likes red."]:
        _, cache = model.run_with_cache(text, sites=["x"])
        trace = cache["x"][best["layer"], best["head"], :, best["neuron"]]
        fired = "".join(ch if v > 0 else "·" for ch, v in zip(text, trace))
        print(f"\n  {text!r}: fires on {fired!r} (peak {trace.max():.3f})")

    # 3. Remove them and read: the loss on place statements and on colour statements.
    edits = [bdh.Edit("x", layer=s["id"]["layer"], head=s["id"]["head"], neuron=s["id"]["neuron"])
             for s in report["most_selective"][:a.top]]
    rng = random.Random(0)
    texts = {"place": " ".join(f"{rng.choice(NAMES)} lives in {rng.choice(PLACES)}." for _ in range(40)),
             "colour": " ".join(f"{rng.choice(NAMES)} likes {rng.choice(COLORS)}." for _ in range(40))}
    print(f"\nloss (nats per byte) with the top {len(edits)} removed:")
    for name, text in texts.items():
        ids = model.encode(text)
        intact = model.loss(ids[:-1], ids[1:])
        with model.edits(edits):
            removed = model.loss(ids[:-1], ids[1:])
        print(f"  {name:6s} statements: {intact:.3f} → {removed:.3f}")

    # 4. The curve: answers right as the most selective neurons go, against as many random ones.
    ks = [p["k"] for p in report["curve"]]
    selected = [accuracy(p["selected"], kind) for p in report["curve"]]
    control = [accuracy(p["random"], kind) for p in report["curve"]]
    base = accuracy(report["baseline"], kind)
    print(f"\n{kind} answers right (intact: {base:.0%}):")
    print("  removed  most selective  random")
    for k, s, r in zip(ks, selected, control):
        print(f"  {k:7d}  {s:14.0%}  {r:6.0%}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, selected, "o-", label=f"most {kind}-selective removed")
    ax.plot(ks, control, "s--", label="as many random neurons removed")
    ax.axhline(base, color="grey", lw=0.8, label="intact")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("neurons removed")
    ax.set_ylabel(f"{kind} answers right")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.plot, dpi=120)
    print(f"\nwrote {a.plot}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
