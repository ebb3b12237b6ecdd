#!/usr/bin/env python3
"""Expected data-parallel scaling of BDH on paper (docs/scaling.md): bytes
all-reduced per step, ring all-reduce time at 10, 25 and 100 Gb/s, compute time
per step, and the efficiency compute / (compute + communication) at 8, 64 and
512 processes. Pure arithmetic; no dependencies."""

V, H, MULT, L = 256, 4, 128, 6  # bdh.py's defaults: vocabulary, heads, N·H = MULT·D, layers


def params(d):
    # encoder and encoder_v (D × N·H), decoder (N·H × D), embed and lm_head (V × D)
    return 3 * MULT * d * d + 2 * V * d


def flops(d, seqs, t):
    """Forward and backward (3 × forward) of `seqs` sequences of `t` tokens: every
    layer applies the shared weights again, and the causal linear attention reads
    T²/2 scores over N·H neurons and mixes D values per head."""
    nh = MULT * d
    matmul = 2 * t * (L * 3 * MULT * d * d + V * d)
    attention = L * t * t * (nh + d * H)
    return 3 * seqs * (matmul + attention)


def ring_seconds(nbytes, k, gbit):
    return 2 * (k - 1) / k * nbytes / (gbit * 1e9 / 8)


def main():
    sizes = [("config S (L4 D128)", None), ("25 M", 256), ("100 M", 512), ("400 M", 1024), ("1 B", 1600)]
    seqs, t, tflops = 32, 512, 100.0  # local batch per process; sustained FLOP/s per process
    print(f"local batch {seqs} × {t} tokens, {tflops:.0f} TFLOP/s sustained per process, f32 gradients\n")
    print("| model | parameters | MB all-reduced | compute s/step | 10 Gb/s: s, eff. 8/64/512 | 25 Gb/s | 100 Gb/s |")
    print("|---|---:|---:|---:|---|---|---|")
    for name, d in sizes:
        if d is None:  # config S: N = 1024 per head, 4 layers, 4 heads, measured shape
            p, f = 1_638_400, None
        else:
            p, f = params(d), flops(d, seqs, t)
        nbytes = 4 * p
        row = [name, f"{p / 1e6:.1f} M", f"{nbytes / 1e6:.0f}"]
        if f is None:
            row.append("(measured)")
            for g in (10, 25, 100):
                row.append(f"{ring_seconds(nbytes, 512, g) * 1e3:.1f} ms")
        else:
            compute = f / (tflops * 1e12)
            row.append(f"{compute:.3f}")
            for g in (10, 25, 100):
                effs = [compute / (compute + ring_seconds(nbytes, k, g)) for k in (8, 64, 512)]
                row.append(f"{ring_seconds(nbytes, 512, g):.3f} s; " + " / ".join(f"{e:.0%}" for e in effs))
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
