#!/usr/bin/env python3
"""PyTorch baseline of the BDH model, written from the equations, for speed ratios.

Eager PyTorch, float32, the same shapes, names and initialisation as `bdh`.
Not run by CI. Needs `pip install torch`. Run with OMP_WAIT_POLICY=PASSIVE.

    python bench/torch_baseline.py train --layers 4 --embd 128 --heads 4 --mult 32 --batch 8 --block 256
    python bench/torch_baseline.py generate --model runs/small/best --prompt-len 16 --tokens 256
"""
import argparse
import json
import math
import struct
import time

import torch
import torch.nn.functional as F


class Bdh(torch.nn.Module):
    def __init__(self, L, D, H, mult, V=256, dropout=0.0):
        super().__init__()
        N = mult * D // H
        self.L, self.D, self.H, self.N, self.p = L, D, H, N, dropout
        g = lambda *s: torch.nn.Parameter(torch.randn(*s) * 0.02)
        self.embed, self.encoder, self.encoder_v = g(V, D), g(H, D, N), g(H, D, N)
        self.decoder, self.lm_head = g(H * N, D), g(D, V)
        i = torch.arange(N, dtype=torch.float32)
        self.register_buffer("freqs", 1.0 / (2.0**16) ** (torch.floor(i / 2) * 2 / N) / (2 * math.pi))

    def rope(self, x):  # x: (B, H, T, N), rotate neuron pairs (2j, 2j+1)
        T = x.shape[2]
        phase = (torch.arange(T, dtype=torch.float32)[:, None] * self.freqs) % 1 * (2 * math.pi)
        partner = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).view_as(x)
        return x * phase.cos() + partner * phase.sin()

    def forward(self, idx):
        B, T = idx.shape
        ln = lambda t: F.layer_norm(t, (self.D,))
        v = ln(self.embed[idx]).unsqueeze(1)  # (B, 1, T, D)
        mask = torch.ones(T, T).tril(-1)
        for _ in range(self.L):
            x = F.relu(v @ self.encoder)  # (B, H, T, N)
            xr = self.rope(x)
            a = ln(((xr @ xr.transpose(-1, -2)) * mask) @ v)  # (B, H, T, D)
            y = F.relu(a @ self.encoder_v) * x
            y = F.dropout(y, self.p, self.training)
            u = y.transpose(1, 2).reshape(B, 1, T, self.H * self.N) @ self.decoder
            v = ln(v + ln(u))
        return v.view(B, T, self.D) @ self.lm_head


def load_safetensors(model, path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    names = {"embed.weight": "embed", "attn.freqs": "freqs"}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        s, e = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[s:e]), dtype=torch.float32).view(meta["shape"])
        getattr(model, names.get(key, key)).data.copy_(t.reshape(getattr(model, names.get(key, key)).shape))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "forward", "generate"])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mult", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", help="checkpoint directory (model.safetensors + config.json)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model:
        c = json.load(open(f"{a.model}/config.json"))
        a.layers, a.embd, a.heads, a.mult = c["n_layer"], c["n_embd"], c["n_head"], c["mlp_internal_dim_multiplier"]
    model = Bdh(a.layers, a.embd, a.heads, a.mult, dropout=0.1 if a.mode == "train" else 0.0)
    if a.model:
        load_safetensors(model, f"{a.model}/model.safetensors")
    idx = torch.randint(0, 256, (a.batch, a.block))
    tgt = torch.randint(0, 256, (a.batch, a.block))
    if a.mode == "generate":
        model.eval()
        prompt = torch.randint(32, 127, (1, a.prompt_len))
        with torch.no_grad():
            t0 = time.perf_counter()
            seq = prompt
            for _ in range(a.tokens):  # as the reference: recompute the whole sequence per token
                logits = model(seq)[:, -1]
                seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
            dt = time.perf_counter() - t0
        print(f"generate: {a.tokens} tokens after {a.prompt_len} in {dt:.2f} s, {a.tokens / dt:.1f} tokens/s")
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    times = []
    for i in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        if a.mode == "train":
            model.train()
            loss = F.cross_entropy(model(idx).view(-1, 256), tgt.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(idx)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(f"{a.mode}: median {med * 1e3:.1f} ms over {len(times)}, {a.batch * a.block / med:.0f} tokens/s")


if __name__ == "__main__":
    main()
