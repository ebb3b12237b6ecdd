#!/usr/bin/env bash
# Speed of bdh against the PyTorch baseline (bench/torch_baseline.py), measured
# back to back in one run. Needs a release build and `python3 -c "import torch"`
# (set PYTHON to another interpreter). Usage: bench/compare.sh [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
py=${PYTHON:-python3}
bdh=target/release/bdh
export OMP_WAIT_POLICY=PASSIVE
model=tests/golden/ref-small-trained

echo "== machine"; lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/Flags:.*\(avx512f\).*/Flags: ... avx512f .../'
echo "== config S training step (L4 D128 H4 mult 32, B8 T256)"
$bdh bench train --preset small --threads "$threads" --iters 5
$py bench/torch_baseline.py train --layers 4 --embd 128 --heads 4 --mult 32 --batch 8 --block 256 --threads "$threads" --iters 3
echo "== config R training step (L6 D256 H4 mult 128, B1 T512)"
$bdh bench train --preset paper --batch 1 --block 512 --threads "$threads" --iters 3 --warmup 1
$py bench/torch_baseline.py train --layers 6 --embd 256 --heads 4 --mult 128 --batch 1 --block 512 --threads "$threads" --iters 2
echo "== generate 256 tokens after 16, trained small model"
$bdh bench generate --model "$model" --threads "$threads" --prompt-len 16 --tokens 256 --long-context 8192
$py bench/torch_baseline.py generate --model "$model" --prompt-len 16 --tokens 256 --threads "$threads"
if [ -n "${NANOGPT_MODEL_PY:-}" ]; then
  echo "== GPT baseline training step, gpt-small (L4 D180 H6, B8 T256) against nanoGPT's model.py"
  for i in 1 2 3; do
    $bdh bench train --preset gpt-small --threads "$threads" --iters 5 | grep "train step"
    $py bench/torch_gpt.py --model-py "$NANOGPT_MODEL_PY" --threads "$threads" --iters 5 | grep "train step"
  done
  $py bench/torch_gpt.py --model-py "$NANOGPT_MODEL_PY" --threads "$threads" --iters 5 --compile | grep compile
fi
