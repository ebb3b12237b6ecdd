#!/usr/bin/env python3
"""Times a training step of nanoGPT's model.py (the GPT baseline's reference) in
PyTorch, eager and with torch.compile, for speed ratios against `bdh bench train
--preset gpt-small`. nanoGPT is not shipped here: give its model.py with
--model-py (github.com/karpathy/nanoGPT, commit 3adf61e). Not run by CI.

    OMP_WAIT_POLICY=PASSIVE python bench/torch_gpt.py --model-py /path/to/model.py \\
        --layers 4 --heads 6 --embd 180 --block 256 --batch 8 --threads 2
"""
import argparse
import importlib.util
import time

import torch


def load_nanogpt(path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_steps(step, warmup, iters):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-py", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--embd", type=int, default=180)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = load_nanogpt(a.model_py)
    cfg = m.GPTConfig(block_size=a.block, vocab_size=256, n_layer=a.layers, n_head=a.heads, n_embd=a.embd,
                      dropout=0.0, bias=False)
    x = torch.randint(0, 256, (a.batch, a.block))
    y = torch.randint(0, 256, (a.batch, a.block))
    for name, wrap in [("eager", lambda g: g)] + ([("compile", torch.compile)] if a.compile else []):
        model = m.GPT(cfg)
        # nanoGPT's configure_optimizers: decay tensors of two or more dimensions only.
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999))
        fwd = wrap(model)

        def step():
            _, loss = fwd(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        med, best = time_steps(step, a.warmup, a.iters)
        tokens = a.batch * a.block
        print(f"nanoGPT {name} train step: median {med * 1e3:.1f} ms (min {best * 1e3:.1f} ms over {a.iters}), "
              f"{tokens / med:.0f} tokens/s, threads {a.threads}")


if __name__ == "__main__":
    main()
