#!/usr/bin/env python3
"""The layer's variants (norm, residual, position, decay) in PyTorch, from the paper's
equations, and the golden outputs the Rust tests compare against.

This is an independent implementation of BDH's forward written from the equations
(docs/design.md, "The layer's variants"), not a copy of bdh.py: at the default of every
option it must equal bdh.py, which it checks against the committed bdh.py fixture
`ref-tiny/expected.safetensors` (logits, loss, every gradient) before writing anything.

    python3 tests/golden/variants.py           # check, then (re)write variants/expected.safetensors
    python3 tests/golden/variants.py --check   # check, and compare with the committed file

It needs `torch` and `safetensors` (`pip install torch safetensors`), runs on the CPU in
float32 and is not run by CI. Weights: ref-tiny's, times SCALE (std 0.2 instead of 0.02,
so that a model without norms has gradients a float32 test can see); inputs: ref-tiny's.
Keys of the output: `scale`, and for each variant `<name>.logits`, `<name>.loss` and
`<name>.grad.<param>`, the name `norm-residual-position[-decay]` (e.g. `none-n-none-decay`).
"""

import argparse
import itertools
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = 10.0
GAMMA = [0.9, 0.99]  # the retention per head of the decayed variants
PARAMS = ["embed.weight", "encoder", "encoder_v", "decoder", "lm_head"]


def forward(w, freqs, idx, norm, residual, position, gamma):
    """Logits (B, T, V) of BDH with the given variant; w holds the parameters by name."""
    ln = (lambda z: F.layer_norm(z, z.shape[-1:])) if norm == "layer" else (lambda z: z)
    enc, enc_v, dec = w["encoder"], w["encoder_v"], w["decoder"]
    heads, _, n = enc.shape
    b, t = idx.shape
    v = ln(w["embed.weight"][idx]).unsqueeze(1)  # v_0: (B, 1, T, D)
    pos = torch.arange(t, dtype=torch.float32).view(t, 1)
    phases = (pos * freqs.view(1, n)) % 1 * (2 * math.pi)  # (T, N)
    cos, sin = torch.cos(phases), torch.sin(phases)
    # strictly causal mask, times γ_h^(t−τ) with a decay
    dist = (pos - pos.view(1, t)).clamp(min=0)
    mask = torch.ones(t, t).tril(-1)
    if gamma is None:
        mask = mask.view(1, 1, t, t)
    else:
        g = torch.tensor(gamma, dtype=torch.float32).view(heads, 1, 1)
        mask = (mask * g**dist).view(1, heads, t, t)
    x_prev = None
    for _ in range(LAYERS):
        x = F.relu(v @ enc)  # (B, H, T, N)
        if residual == "n":  # x_l = x_{l−1} + relu(v_{l−1} · E), x_0 = 0
            x = x if x_prev is None else x_prev + x
            x_prev = x
        if position == "rope":  # pairs (2j, 2j+1) rotated by the phase of their frequency
            turned = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).view(x.shape)
            q = x * cos + turned * sin
        else:
            q = x
        scores = (q @ q.transpose(-1, -2)) * mask
        a = ln(scores @ v)  # (B, H, T, D)
        y = F.relu(a @ enc_v) * x  # (B, H, T, N)
        u = y.transpose(1, 2).reshape(b, 1, t, heads * n) @ dec  # (B, 1, T, D)
        v = ln(v + ln(u)) if residual == "d" else ln(u)
    return v.squeeze(1) @ w["lm_head"]


def outputs(weights, freqs, idx, targets, variant):
    norm, residual, position, gamma = variant
    w = {k: weights[k].clone().requires_grad_(True) for k in PARAMS}
    f = torch.zeros_like(freqs) if position == "none" else freqs
    logits = forward(w, f, idx, norm, residual, position, gamma)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    out.update({f"grad.{k}": w[k].grad for k in PARAMS})
    return out


def rel(got, want):
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def variants():
    for norm, residual, position in itertools.product(["layer", "none"], ["d", "n"], ["rope", "none"]):
        yield f"{norm}-{residual}-{position}", (norm, residual, position, None)
        yield f"{norm}-{residual}-{position}-decay", (norm, residual, position, GAMMA)


def main():
    global LAYERS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file; write nothing")
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    ref = os.path.join(HERE, "ref-tiny")
    weights = load_file(os.path.join(ref, "model.safetensors"))
    expected = load_file(os.path.join(ref, "expected.safetensors"))
    LAYERS = 2  # ref-tiny's n_layer (config.json)
    freqs = weights["attn.freqs"].reshape(-1)
    idx, targets = expected["input_ids"], expected["targets"]

    # At the defaults this is bdh.py: its own fixture, on its own weights.
    ours = outputs(weights, freqs, idx, targets, ("layer", "d", "rope", None))
    worst = {k: rel(ours[k], expected[k]) for k in ours}
    for k, r in worst.items():
        print(f"defaults vs bdh.py  {k:22s} max rel {r:.2e}")
    bad = [k for k, r in worst.items() if r > (5e-3 if k.startswith("grad.") else 1e-4)]
    if bad:
        sys.exit(f"the defaults differ from bdh.py's fixture in {bad}")

    scaled = {k: v * SCALE for k, v in weights.items() if k in PARAMS}
    out = {"scale": torch.tensor([SCALE])}
    for name, variant in variants():
        for k, v in outputs(scaled, freqs, idx, targets, variant).items():
            out[f"{name}.{k}"] = v.contiguous()
        print(f"{name:22s} loss {out[name + '.loss'].item():.6f}")
    path = os.path.join(HERE, "variants", "expected.safetensors")
    if args.check:
        committed = load_file(path)
        worst = max(rel(out[k], committed[k]) for k in out)
        print(f"against the committed file: max rel {worst:.2e}")
        sys.exit(0 if worst < 1e-6 else 1)
    save_file(out, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
