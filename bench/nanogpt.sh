#!/usr/bin/env bash
# nanoGPT's CPU recipe for tiny Shakespeare (L4 H4 D128, context 64, batches of 12,
# 2000 steps) trained end to end by nanoGPT's train.py and by `bdh train --preset
# gpt-nanogpt`, as whole processes, alternated (each round swaps who goes first), on
# one and on two threads; then one training step of each at that shape. nanoGPT is
# not shipped here: give a checkout of github.com/karpathy/nanoGPT (commit 3adf61e)
# whose data/shakespeare_char was prepared (its prepare.py) as NANOGPT_DIR. Needs
# bash 5, a release build, PyTorch and data/tinyshakespeare.txt (`bdh data fetch`).
# Not run by CI.
#   NANOGPT_DIR=/path/to/nanoGPT bench/nanogpt.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "rounds must be a positive number, not '$rounds'" >&2; exit 2; }
py=${PYTHON:-python3}
bdh=$PWD/target/release/bdh
nano=${NANOGPT_DIR:?set NANOGPT_DIR to a nanoGPT checkout with data/shakespeare_char prepared}
export OMP_WAIT_POLICY=PASSIVE
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Runs a command and prints its wall time in seconds (its output kept, shown if it fails).
seconds() {
  local t0=$EPOCHREALTIME
  "$@" > "$out/log" 2>&1 || { tail -n 20 "$out/log" >&2; return 1; }
  python3 -c "print(f'{$EPOCHREALTIME - $t0:.1f}')"
}
ours() { seconds "$bdh" train --preset gpt-nanogpt --data data/tinyshakespeare.txt --threads "$1" --out "$out/bdh" --quiet; }
theirs() {
  cd "$nano" && seconds env OMP_NUM_THREADS="$1" "$py" train.py config/train_shakespeare_char.py --device=cpu \
    --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 \
    --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 --out_dir="$out/nano"
}

for threads in 1 2; do
  for round in $(seq "$rounds"); do
    rm -rf "$out/bdh" "$out/nano"
    if (( round % 2 )); then b=$(ours "$threads"); n=$(theirs "$threads"); else n=$(theirs "$threads"); b=$(ours "$threads"); fi
    echo "$threads thread(s), round $round: bdh $b s, nanoGPT $n s, nanoGPT/bdh $(python3 -c "print(f'{$n / $b:.2f}')")"
  done
done
echo "== one training step at the recipe's shape (B12 T64)"
for threads in 1 2; do
  "$bdh" bench train --preset gpt-nanogpt --threads "$threads" --iters 20 | grep "train step"
  OMP_NUM_THREADS=$threads "$py" bench/torch_gpt.py --model-py "$nano/model.py" --layers 4 --heads 4 --embd 128 \
    --block 64 --batch 12 --threads "$threads" --iters 20 | grep "train step"
done
