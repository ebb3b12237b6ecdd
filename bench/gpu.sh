#!/usr/bin/env bash
# The GPU check, at most 4 minutes on the device: (1) whether cubecl's CUDA runtime
# starts on this driver (else Vulkan is tried), (2) `bdh verify --device gpu` on
# every BDH golden, (3) generation of one stream at bdh.py's default config (L6 D256
# H4, N 8192) — bdh's recurrent step on the device against bdh.py's `generate`
# (which re-runs the prefix for every token) under bf16 autocast — with peak device
# memory, (4) a training step at bdh.py's default config and batch (B32 T512): bdh
# in f32 and in bf16 against bdh.py with bf16 autocast, eager and torch.compile'd,
# (5) serving: 64 streams generated together, one batched step a token (as `bdh
# serve --device gpu` decodes), against bdh.py's `generate` of a batch of 64 under
# bf16 autocast. Prints a table and writes it to $OUT/gpu.md (or bench/gpu/out/).
#
# On the build machine (Rust, no GPU needed):
#   bench/gpu.sh build [PATH/TO/bdh.py]   # stripped binary to bench/gpu/bdh, bdh.py to bench/ext/
# On the machine with the GPU (no Rust needed; PyTorch for bdh.py's row):
#   bench/gpu.sh                          # or: bench/gpu.sh run [BINARY]
# Dry run anywhere (a software Vulkan device, bdh.py on the CPU, the tiny preset):
#   BENCH_DRY=1 bench/gpu.sh
# Both bench/gpu/ and bench/ext/ are git-ignored: bdh.py is not shipped here.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
case $mode in
  build)
    cargo build --release --locked --features gpu -p bdh-cli || exit 1
    mkdir -p bench/gpu bench/ext
    strip -o bench/gpu/bdh target/release/bdh || exit 1
    if [[ -n ${2:-} ]]; then cp "$2" bench/ext/bdh.py; fi
    [[ -f bench/ext/bdh.py ]] || echo "note: no bench/ext/bdh.py (the official https://github.com/pathwaycom/bdh/blob/main/bdh.py): bdh.py's row will be missing" >&2
    ls -l bench/gpu/bdh
    exit 0 ;;
  run) bin=${2:-bench/gpu/bdh} ;;
  *) echo "usage: bench/gpu.sh [build [bdh.py] | run [binary]]" >&2; exit 2 ;;
esac
[[ -x $bin ]] || { echo "no binary at $bin: run 'bench/gpu.sh build' on a machine with Rust first" >&2; exit 2; }
out=${OUT:-bench/gpu/out}
mkdir -p "$out"
# (built on Debian 12, the binary needs glibc 2.35 or newer: Ubuntu 22.04, Debian 12)
"$bin" --version > /dev/null 2> "$out/start.txt" || { echo "$bin does not start here: $(cat "$out/start.txt")" >&2; exit 1; }
py=${PYTHON:-python3}
dry=${BENCH_DRY:-0}
preset=paper; torch_device=cuda; sets=(); batch=32; block=512
if [[ $dry == 1 ]]; then
  preset=tiny; torch_device=cpu; batch=4; block=64
  sets=(--set n_layer=2 --set n_embd=64 --set n_head=2 --set mlp_internal_dim_multiplier=8)  # = tiny
fi
tokens=${BENCH_TOKENS:-256}
streams=${BENCH_STREAMS:-64}; serve_tokens=${BENCH_SERVE_TOKENS:-64}
t_start=$SECONDS
log() { echo "[$((SECONDS - t_start)) s] $*" >&2; }

# One deadline for the whole check: every step gets what is left of it.
deadline=$((SECONDS + ${BENCH_SECONDS:-225}))
left() { local s=$((deadline - SECONDS)); (( s > ${1:-s} )) && s=$1; (( s > 5 )) && echo "$s" || echo 5; }

# cubecl's CUDA runtime compiles kernels with NVRTC against the CUDA headers: where
# the system has no CUDA toolkit, PyTorch's pip wheels carry both (nvidia/cu13).
if ! ldconfig -p 2>/dev/null | grep -q libnvrtc; then
  extra=$("$py" -c 'import glob, os, sys; print(":".join(sorted({os.path.dirname(p) for d in sys.path for p in glob.glob(d + "/nvidia/*/lib/libnvrtc*.so*")})))' 2>/dev/null)
  [[ -n $extra ]] && export LD_LIBRARY_PATH=$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} && log "NVRTC from $extra"
fi
if [[ -z ${CUDA_PATH:-} && ! -d /usr/local/cuda/include && ! -d /opt/cuda/include ]]; then
  headers=$("$py" -c 'import glob, os, sys; print(next((os.path.dirname(os.path.dirname(p)) for d in sys.path for p in sorted(glob.glob(d + "/nvidia/*/include/cuda.h"))), ""))' 2>/dev/null)
  [[ -n $headers ]] && export CUDA_PATH=$headers && log "CUDA headers from $headers/include"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2

# 1. Which backend starts: CUDA first; if its runtime fails here, Vulkan.
verify() { timeout "$(left)" "$bin" verify --device gpu --model "tests/golden/$1" --golden "tests/golden/$1/expected.safetensors"; }
backend=cuda
if ! BDH_GPU_BACKEND=cuda verify ref-tiny > "$out/verify-ref-tiny.txt" 2>&1; then
  log "CUDA did not start: $(tail -n 3 "$out/verify-ref-tiny.txt")"
  backend=vulkan
  verify ref-tiny > "$out/verify-ref-tiny.txt" 2>&1
fi
export BDH_GPU_BACKEND=$backend
log "backend: $backend"

# 2. Parity with the reference on the device (ref-tiny was verified just now).
verdicts=()
for g in ref-tiny ref-small-trained; do
  [[ $g == ref-tiny ]] || verify "$g" > "$out/verify-$g.txt" 2>&1
  verdicts+=("$g: $(grep -E '^(PASS|FAIL)' "$out/verify-$g.txt" || tail -n 1 "$out/verify-$g.txt")")
  log "verify $g done"
done

# 3. One stream at bdh.py's default config: bdh's recurrent step on the device ...
timeout "$(left 100)" "$bin" bench generate --preset "$preset" --device gpu --prompt-len 16 --tokens "$tokens" \
  > "$out/bdh-generate.txt" 2>&1
log "bdh generate done"
# ... and bdh.py's generate, bf16 autocast.
if [[ -f bench/ext/bdh.py ]]; then
  timeout "$(left)" "$py" bench/bdhpy_generate.py --bdh-py bench/ext/bdh.py --device "$torch_device" --bf16 \
    --prompt-len 16 --tokens "$tokens" "${sets[@]}" > "$out/bdhpy-generate.json" 2> "$out/bdhpy-generate.err"
  log "bdh.py generate done"
else
  echo '{"missing": "bench/ext/bdh.py"}' > "$out/bdhpy-generate.json"
fi

# 4. Training steps at bdh.py's default config and batch: bdh in f32 and in bf16 ...
for precision in f32 bf16; do
  timeout "$(left 45)" "$bin" bench train --preset "$preset" --device gpu --batch "$batch" --block "$block" \
    --iters 3 --warmup 1 --set "training.precision=$precision" > "$out/bdh-train-$precision.txt" 2>&1
  log "bdh train ($precision) done"
done
# ... and bdh.py's train.py step under bf16 autocast, eager and compiled (on a GPU).
if [[ -f bench/ext/bdh.py ]]; then
  modes=(eager); [[ $dry == 1 ]] || modes+=(compile)
  for mode in "${modes[@]}"; do
    flag=(); [[ $mode == compile ]] && flag=(--compile)
    timeout "$(left 60)" "$py" bench/bdhpy_train.py --bdh-py bench/ext/bdh.py --device "$torch_device" --bf16 \
      "${flag[@]}" --batch "$batch" --block "$block" "${sets[@]}" > "$out/bdhpy-train-$mode.json" 2> "$out/bdhpy-train-$mode.err"
    log "bdh.py train ($mode) done"
  done
fi

# 5. Serving: 64 streams stepped together on the device, against bdh.py's generate of
# a batch of 64 (bf16 autocast), the same tokens.
timeout "$(left 40)" "$bin" bench generate --preset "$preset" --device gpu --streams "$streams" --prompt-len 16 \
  --tokens "$serve_tokens" > "$out/bdh-serve.txt" 2>&1
log "bdh serving done"
if [[ -f bench/ext/bdh.py ]]; then
  timeout "$(left 60)" "$py" bench/bdhpy_generate.py --bdh-py bench/ext/bdh.py --device "$torch_device" --bf16 \
    --batch "$streams" --prompt-len 16 --tokens "$serve_tokens" "${sets[@]}" > "$out/bdhpy-serve.json" 2> "$out/bdhpy-serve.err"
  log "bdh.py batched generate done"
else
  echo '{"missing": "bench/ext/bdh.py"}' > "$out/bdhpy-serve.json"
fi

# The tables (bdh's memory: what cubecl's pools hold after the run; bdh.py's: the
# peak torch allocated).
"$py" - "$out" "$backend" "$tokens" "$preset" "$batch" "$block" "$streams" "$serve_tokens" "${verdicts[@]}" <<'PY' | tee "$out/gpu.md"
import json, re, sys
out, backend, tokens, preset, batch, block = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
streams, serve_tokens = int(sys.argv[7]), int(sys.argv[8])
verdicts = sys.argv[9:]
config = "bdh.py's default config" if preset == "paper" else f"the {preset} preset (a dry run)"
text = open(f"{out}/bdh-generate.txt").read()
m = re.search(r"generate (\d+) tokens after (\d+): ([\d.]+) tokens/s", text)
mem = re.search(r"device memory held: ([\d.]+) MiB", text)
dev = re.search(r"running on the (.*)", text)
try:
    ref = json.load(open(f"{out}/bdhpy-generate.json"))
except Exception as e:
    ref = {"error": str(e)}
print(f"device: {dev.group(1) if dev else '?'} (backend {backend})")
for v in verdicts:
    print(f"verify {v}")
print()
print(f"| one stream, greedy, {config} | tokens/s | device memory |")
print("|---|---|---|")
ours = float(m.group(3)) if m else None
print(f"| bdh, recurrent step on the device (f32) | {ours if ours else 'failed: see bdh-generate.txt'} | {mem.group(1) + ' MiB held by its pools' if mem else '?'} |")
if "tokens_per_second" in ref:
    peak = ref["peak_bytes"]
    print(f"| bdh.py `generate`, bf16 autocast ({ref['device']}) | {ref['tokens_per_second']:.1f} | {peak / 2**20:.0f} MiB peak allocated |" if peak else
          f"| bdh.py `generate`, bf16 autocast ({ref['device']}) | {ref['tokens_per_second']:.1f} | – |")
    if ours:
        print(f"\nbdh / bdh.py: {ours / ref['tokens_per_second']:.1f}× ({tokens} tokens after a 16-token prompt)")
else:
    print(f"| bdh.py `generate` | not run: {ref} | |")

def load(name):
    try:
        return json.load(open(f"{out}/{name}"))
    except Exception as e:
        return {"error": str(e)}

# NVIDIA's dense bf16 tensor-core peak of the H200 (SXM): 989 TFLOP/s.
peak = 989e3 if dev and "H200" in dev.group(1) else None
print()
print(f"| a training step, {config}, B{batch} T{block} | tokens/s | model TFLOP/s | device memory |")
print("|---|---|---|---|")
rows = {}
for precision in ["f32", "bf16"]:
    t = open(f"{out}/bdh-train-{precision}.txt").read() if __import__("os").path.exists(f"{out}/bdh-train-{precision}.txt") else ""
    m = re.search(r"train step on the device \(\w+\): median ([\d.]+) ms.*?, (\d+) tokens/s, ([\d.]+) model GFLOP/s", t)
    mem = re.search(r"device memory held: ([\d.]+) MiB", t)
    if m:
        rows[precision] = float(m.group(2))
        share = f" ({float(m.group(3)) / peak:.1%} of the bf16 peak)" if peak else ""
        print(f"| bdh, {precision} | {float(m.group(2)):.0f} | {float(m.group(3)) / 1e3:.3g}{share} | {mem.group(1) if mem else '?'} MiB held |")
    else:
        print(f"| bdh, {precision} | failed: see bdh-train-{precision}.txt | | |")
for mode in ["eager", "compile"]:
    ref = load(f"bdhpy-train-{mode}.json")
    if "tokens_per_second" in ref:
        rows[mode] = ref["tokens_per_second"]
        mem = f"{ref['peak_bytes'] / 2**20:.0f} MiB peak allocated" if ref["peak_bytes"] else "–"
        print(f"| bdh.py, bf16 autocast, {'torch.compile' if mode == 'compile' else 'eager'} | {ref['tokens_per_second']:.0f} | | {mem} |")
    elif mode == "compile" and preset != "paper":
        print("| bdh.py, bf16 autocast, torch.compile | not in a dry run | | |")
    else:
        print(f"| bdh.py, bf16 autocast, {mode} | not run: {ref} | | |")
for ours in ["f32", "bf16"]:
    for theirs in ["eager", "compile"]:
        if ours in rows and theirs in rows:
            print(f"bdh {ours} / bdh.py bf16 {theirs}: {rows[ours] / rows[theirs]:.2f}×")

print()
print(f"| {streams} streams, greedy, {config}, {serve_tokens} tokens each after 16 | tokens/s in all | device memory |")
print("|---|---|---|")
t = open(f"{out}/bdh-serve.txt").read() if __import__("os").path.exists(f"{out}/bdh-serve.txt") else ""
m = re.search(r"streams after \d+: ([\d.]+) tokens/s in all", t)
mem = re.search(r"device memory held: ([\d.]+) MiB", t)
ours = float(m.group(1)) if m else None
print(f"| bdh, one batched step a token on the device (f32) | {ours if ours else 'failed: see bdh-serve.txt'} | {mem.group(1) + ' MiB held' if mem else '?'} |")
ref = load("bdhpy-serve.json")
if "tokens_per_second" in ref:
    peak = f"{ref['peak_bytes'] / 2**20:.0f} MiB peak allocated" if ref["peak_bytes"] else "–"
    print(f"| bdh.py `generate` of a batch of {streams}, bf16 autocast | {ref['tokens_per_second']:.1f} | {peak} |")
    if ours:
        print(f"\nbdh / bdh.py, {streams} streams: {ours / ref['tokens_per_second']:.1f}× (goal: 50×)")
else:
    print(f"| bdh.py `generate` of a batch of {streams} | not run: {ref} | |")
PY
log "total"
