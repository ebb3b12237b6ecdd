"""bdh.py's own `generate` (which re-runs the whole prefix for every token), timed:
tokens/s of one stream (or of `--batch` streams in all) and peak device memory, as
JSON on one line. The model is
bdh.py's default config with random weights (speed does not depend on them).

    python3 bench/bdhpy_generate.py --bdh-py PATH/bdh.py [--device cuda] [--bf16]
"""
import argparse
import json
import time

import torch

import bdhpy


def main():
    p = argparse.ArgumentParser(description=__doc__)
    bdhpy.arguments(p)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=1, help="streams generated together")
    a = p.parse_args()
    bdh, config = bdhpy.load(a)
    torch.manual_seed(0)
    model = bdh.BDH(config).to(a.device).eval()
    idx = torch.randint(0, 256, (a.batch, a.prompt_len), device=a.device)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=a.bf16)
    with torch.no_grad(), autocast:
        model.generate(idx, 4, top_k=1)  # warm-up: kernels, allocator
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model.generate(idx, a.tokens, top_k=1)
        sync()
        seconds = time.perf_counter() - t0
    print(json.dumps({
        "tokens": a.tokens,
        "streams": a.batch,
        "prompt_tokens": a.prompt_len,
        "seconds": seconds,
        "tokens_per_second": a.batch * a.tokens / seconds,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": a.bf16,
    }))


if __name__ == "__main__":
    main()
