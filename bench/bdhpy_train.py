"""bdh.py's training step as its train.py runs it (AdamW lr 1e-3, weight decay 0.1,
random byte batches: speed does not depend on the text), timed: tokens/s and peak
device memory, as JSON on one line. The model is bdh.py's default config.

    python3 bench/bdhpy_train.py --bdh-py PATH/bdh.py [--device cuda] [--bf16] [--compile]
"""
import argparse
import json
import time

import torch

import bdhpy


def main():
    p = argparse.ArgumentParser(description=__doc__)
    bdhpy.arguments(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model, as train.py does")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--steps", type=int, default=5, help="timed steps, after 2 warm-up steps")
    a = p.parse_args()
    bdh, config = bdhpy.load(a)
    torch.manual_seed(0)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    model = bdh.BDH(config).to(a.device)
    if a.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=a.bf16)
    x = torch.randint(0, 256, (a.batch, a.block), device=a.device)
    y = torch.randint(0, 256, (a.batch, a.block), device=a.device)

    def step():
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(2):  # warm-up: compilation, allocator
        step()
    sync()
    warmup = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / a.steps
    print(json.dumps({
        "tokens_per_second": a.batch * a.block / seconds,
        "step_seconds": seconds,
        "warmup_seconds": warmup,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": a.bf16,
        "compile": a.compile,
    }))


if __name__ == "__main__":
    main()
