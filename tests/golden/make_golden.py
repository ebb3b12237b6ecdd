#!/usr/bin/env python3
"""Regenerate (or check) the golden fixtures in tests/golden/ with the PyTorch references.

The golden fixtures are data produced by two reference implementations that this project
does NOT ship; this script imports them from files you give it:

  bdh mode  `bdh.py` of github.com/pathwaycom/bdh, commit 714bc80      (--bdh-py PATH)
  gpt mode  `model.py` of github.com/karpathy/nanoGPT, commit 3adf61e  (--nanogpt-model-py PATH)

The committed fixtures were made with torch 2.15 on CPU, in float32, with dropout off (eval
mode). This script does the same: CPU only, float32, `model.eval()`, `torch.manual_seed`.
It needs `torch` and `safetensors` (`pip install torch safetensors`) and no network.
It is not run by CI.

Usage (from the repository root):

    # recompute everything and compare with the committed files; writes nothing
    python3 tests/golden/make_golden.py bdh --bdh-py ~/src/bdh/bdh.py --check
    python3 tests/golden/make_golden.py gpt --nanogpt-model-py ~/src/nanoGPT/model.py --check

    # rewrite expected.safetensors, model.pt and model.safetensors in place
    python3 tests/golden/make_golden.py bdh --bdh-py ~/src/bdh/bdh.py
    # ... or into another folder (config.json is copied there)
    python3 tests/golden/make_golden.py bdh --bdh-py ~/src/bdh/bdh.py --out-dir /tmp/golden

Fixtures are the folders of --golden-dir (default: this script's folder) named `ref-*`
(bdh mode) or `gpt-*` (gpt mode), or those named on the command line. Each folder must
hold `config.json` (the `BDHConfig` / `GPTConfig` fields); the script writes:

  model.safetensors     the state_dict, float32 (a tied tensor once, under its first name:
                        nanoGPT's head is `transformer.wte.weight`, no `lm_head.weight`)
  model.pt              torch.save(model.state_dict())
  expected.safetensors  see below

Two kinds of fixture (taken from the committed expected.safetensors when there is one,
else `-trained` in the folder name means trained; --kind overrides):

  untrained (ref-tiny, gpt-tiny): forward, loss and gradients.
      input_ids, targets (B, T) int64; logits (B, T, V); loss (1,) mean cross-entropy;
      grad.<name> = d loss / d parameter for every parameter of model.named_parameters()
      (a tied parameter once, under its first name).
      Weights: with --reuse-weights (the default) those of the committed model.safetensors
      (or model.pt), so that regenerating reproduces the same fixture and the outputs can be
      compared; with --no-reuse-weights, or where the folder has no weights yet, the model
      is built from config.json after torch.manual_seed(SEED) (ref-tiny: 7, gpt-tiny: 0;
      these reproduce the committed weights bit for bit).
      Inputs: the committed input_ids/targets when expected.safetensors exists, else
      torch.randint(0, V, (B, T)) twice (input_ids, then targets) from a generator seeded
      with SEED + 1 (which is how the committed ones were drawn).

  trained (ref-small-trained, gpt-small-trained): prompt logits and greedy continuation.
      input_ids (1, T) the prompt bytes; logits (1, T, V) for the prompt; greedy_ids
      (1, T + 120): the prompt followed by 120 tokens, each the argmax of the last position
      of a full forward of the whole sequence so far (nanoGPT: its last block_size tokens).
      Weights: always the committed model.safetensors (or model.pt). Training is out of
      scope for this script: the models were trained once with each reference's recipe
      (tiny Shakespeare bytes, AdamW lr 1e-3, wd 0.1, batch 8, block 256; BDH 600 steps,
      dropout 0.1, seed 1337; nanoGPT 2000 steps) and the weights are data.
      Inputs: the committed prompt, else --prompt (UTF-8 bytes).

--check recomputes everything from the committed weights and inputs and prints, for each
tensor, the max abs difference and the max rel difference (max abs difference divided by
the committed tensor's max-abs); it also checks that model.pt and model.safetensors hold
the same weights as the model used. Tolerances (those of `bdh verify`): logits and loss
1e-4 relative, gradients 5e-3 relative, weights, input_ids, targets and greedy_ids equal.
Exit status: 0 all within tolerance, 1 otherwise, 2 on bad input (missing files, wrong
reference file, bad config).
"""
import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    print("make_golden.py: error: needs PyTorch: pip install torch  (the fixtures used torch 2.15, CPU)",
          file=sys.stderr)
    sys.exit(2)
try:
    from safetensors.torch import load_file, save_file
except ImportError:  # pragma: no cover
    print("make_golden.py: error: needs safetensors: pip install safetensors", file=sys.stderr)
    sys.exit(2)

TORCH_VERSION_OF_FIXTURES = "2.15"
GREEDY_TOKENS = 120
UNTRAINED_SHAPE = (2, 16)  # (B, T) of input_ids and targets
TOL_REL = {"logits": 1e-4, "loss": 1e-4, "grad": 5e-3}

# What the committed fixtures were made with, where it is not in the files themselves.
KNOWN = {
    "ref-tiny": {"seed": 7},
    "gpt-tiny": {"seed": 0},
    "ref-small-trained": {"prompt": "ROMEO:\nWhat light through yonder "},
    "gpt-small-trained": {"prompt": "ROMEO:\nWhat light thr"},
}

MODES = {
    # mode: (option holding the reference file, model class, config class, folder prefix)
    "bdh": ("bdh_py", "BDH", "BDHConfig", "ref-"),
    "gpt": ("nanogpt_model_py", "GPT", "GPTConfig", "gpt-"),
}


class InputError(Exception):
    """Bad input: a missing file, a wrong reference module, a bad config. Exit status 2."""


# ----------------------------------------------------------------------------- reference


def import_reference(path, mode):
    """Imports the user's bdh.py / nanoGPT model.py as a module, by path."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"reference file not found: {path}")
    name = f"_golden_reference_{mode}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks the module up while the class is made
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise InputError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    _, model_cls, config_cls, _ = MODES[mode]
    for attr in (model_cls, config_cls):
        if not hasattr(module, attr):
            raise InputError(
                f"{path} has no `{attr}`: is it "
                + ("bdh.py of pathwaycom/bdh?" if mode == "bdh" else "model.py of karpathy/nanoGPT?")
            )
    return module


def make_config(module, mode, cfg):
    config_cls = getattr(module, MODES[mode][2])
    fields = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else None
    if fields is not None:
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise InputError(f"config.json has fields that {config_cls.__name__} lacks: {unknown}")
    try:
        return config_cls(**cfg)
    except TypeError as e:
        raise InputError(f"config.json does not fit {config_cls.__name__}: {e}") from e


def build_model(module, mode, cfg, seed):
    """The reference model, freshly initialised after torch.manual_seed(seed), float32, CPU, eval."""
    torch.manual_seed(seed)
    model = getattr(module, MODES[mode][1])(make_config(module, mode, cfg))
    return model.to(device="cpu", dtype=torch.float32).eval()


def load_weights(model, fixture_dir):
    """Loads the committed weights (model.safetensors, else model.pt) into the model."""
    st, pt = fixture_dir / "model.safetensors", fixture_dir / "model.pt"
    if st.is_file():
        state, source = load_file(str(st)), st
    elif pt.is_file():
        state, source = torch.load(str(pt), map_location="cpu", weights_only=True), pt
    else:
        raise InputError(f"{fixture_dir}: no model.safetensors or model.pt to take the weights from")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied tensor is stored once (nanoGPT: transformer.wte.weight is also lm_head.weight).
    tied = set(tied_aliases(model))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise InputError(f"{source} does not fit the model: missing {missing}, unexpected {list(unexpected)}")
    return source


def tied_aliases(model):
    """state_dict keys whose tensor is the same as an earlier key's: {alias: first name}."""
    seen, aliases = {}, {}
    for k, v in model.state_dict(keep_vars=True).items():
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
        if key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
    return aliases


def check_float32(model):
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and v.dtype != torch.float32]
    if bad:
        raise InputError(f"tensors not float32: {bad}")


# ----------------------------------------------------------------------------- computation


def call(model, mode, idx, targets=None):
    """(logits, loss) for every position of idx.

    bdh.py returns (logits, loss). nanoGPT returns (logits, loss) too, but without targets
    only the last position's logits: when full logits are wanted without a loss, it gets
    idx itself as stand-in targets and the loss is dropped."""
    if mode == "gpt" and targets is None:
        out = model(idx, idx)
        return out[0], None
    out = model(idx, targets) if targets is not None else model(idx)
    if not isinstance(out, (tuple, list)) or len(out) < 2:
        raise InputError("the reference model's forward did not return (logits, loss, ...)")
    return out[0], out[1]


def untrained_outputs(model, mode, input_ids, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = call(model, mode, input_ids, targets)
    if loss is None:
        raise InputError("the reference model returned no loss for the given targets")
    loss.backward()
    out = {
        "input_ids": input_ids,
        "targets": targets,
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(1),
    }
    for name, p in model.named_parameters():  # a tied parameter is listed once
        if p.grad is None:
            raise InputError(f"parameter {name} got no gradient")
        out[f"grad.{name}"] = p.grad.detach().clone().contiguous()
    return out


@torch.no_grad()
def trained_outputs(model, mode, input_ids, n_tokens):
    logits, _ = call(model, mode, input_ids)
    ids = input_ids
    block = getattr(getattr(model, "config", None), "block_size", None) if mode == "gpt" else None
    for _ in range(n_tokens):
        cond = ids if block is None else ids[:, -block:]
        last = call_last(model, cond)
        ids = torch.cat((ids, last.argmax(dim=-1, keepdim=True)), dim=1)
    return {"input_ids": input_ids, "logits": logits.contiguous(), "greedy_ids": ids}


def call_last(model, idx):
    """Logits of the last position, from a full forward of idx (nanoGPT computes only that one)."""
    return model(idx)[0][:, -1, :]


# ----------------------------------------------------------------------------- fixtures


def fixture_kind(name, committed, override):
    if override:
        return override
    if committed is not None:
        return "trained" if "greedy_ids" in committed else "untrained"
    return "trained" if "trained" in name else "untrained"


def make_inputs(kind, name, committed, args, vocab, seed):
    if committed is not None and not args.fresh_inputs:
        if kind == "untrained":
            for k in ("input_ids", "targets"):
                if k not in committed:
                    raise InputError(f"{name}: expected.safetensors has no `{k}`")
            return committed["input_ids"].long(), committed["targets"].long()
        if "input_ids" not in committed:
            raise InputError(f"{name}: expected.safetensors has no `input_ids`")
        return committed["input_ids"].long(), None
    if kind == "untrained":
        g = torch.Generator().manual_seed(seed + 1)
        shape = (args.batch, args.seq_len)
        return torch.randint(0, vocab, shape, generator=g), torch.randint(0, vocab, shape, generator=g)
    prompt = args.prompt if args.prompt is not None else KNOWN.get(name, {}).get("prompt")
    if prompt is None:
        raise InputError(f"{name}: no committed prompt; give one with --prompt")
    ids = list(prompt.encode("utf-8"))
    if not ids or max(ids) >= vocab:
        raise InputError(f"{name}: the prompt must be non-empty bytes below vocab_size {vocab}")
    return torch.tensor([ids], dtype=torch.long), None


def run_fixture(module, mode, fixture_dir, args):
    """Computes one fixture. Returns (model, outputs, committed expected or None)."""
    name = fixture_dir.name
    cfg_path = fixture_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{fixture_dir}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_path}: {e}") from e
    exp_path = fixture_dir / "expected.safetensors"
    committed = load_file(str(exp_path)) if exp_path.is_file() else None
    if args.check and committed is None:
        raise InputError(f"{fixture_dir}: --check needs a committed expected.safetensors")
    kind = fixture_kind(name, committed, args.kind)
    seed = args.seed if args.seed is not None else KNOWN.get(name, {}).get("seed", 0)

    model = build_model(module, mode, cfg, seed)
    has_weights = any((fixture_dir / f).is_file() for f in ("model.safetensors", "model.pt"))
    if kind == "trained" and not has_weights:
        raise InputError(f"{fixture_dir}: a trained fixture takes its weights from the committed "
                         "model.safetensors (or model.pt), and there is none; training is out of scope")
    if kind == "trained" or (args.reuse_weights and has_weights):
        source = load_weights(model, fixture_dir)
        print(f"  weights: {source}")
    else:
        note = "" if not args.reuse_weights else " (no committed weights to reuse)"
        print(f"  weights: fresh, torch.manual_seed({seed}){note}")
    check_float32(model)
    model.eval()

    vocab = int(cfg.get("vocab_size", 256))
    input_ids, targets = make_inputs(kind, name, committed, args, vocab, seed)
    print(f"  {kind}: input_ids {tuple(input_ids.shape)}")
    if kind == "untrained":
        out = untrained_outputs(model, mode, input_ids, targets)
    else:
        out = trained_outputs(model, mode, input_ids, args.greedy_tokens)
        tail = bytes(out["greedy_ids"][0, input_ids.shape[1]:].tolist()) if vocab <= 256 else b""
        print(f"  greedy: {tail.decode('utf-8', 'replace')!r}")
    return model, out, committed


def weights_to_save(model):
    """The state_dict, each tensor once (an alias of a tied tensor is left out), contiguous."""
    aliases = tied_aliases(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in aliases}


def atomic_write(path, write):
    """write(p) into a temporary folder beside path, then moves the file into place.

    The temporary file has path's own name: torch.save names the archive's root folder after
    the file (`model/` for model.pt), and the committed files have that root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        write(str(tmp_path))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)


def write_fixture(model, out, fixture_dir, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != fixture_dir.resolve():
        for extra in ("config.json", "train-log.json"):
            if (fixture_dir / extra).is_file():
                shutil.copyfile(fixture_dir / extra, out_dir / extra)
    atomic_write(out_dir / "model.safetensors", lambda p: save_file(weights_to_save(model), p))
    atomic_write(out_dir / "model.pt", lambda p: torch.save(model.state_dict(), p))
    atomic_write(out_dir / "expected.safetensors", lambda p: save_file(out, p))
    print(f"  wrote {out_dir}/{{model.safetensors, model.pt, expected.safetensors}}")


# ----------------------------------------------------------------------------- check


def tolerance(name):
    if name.startswith("grad."):
        return TOL_REL["grad"]
    return TOL_REL.get(name, 1e-4)


def compare(name, got, want, tol=None):
    """Returns (line, ok) comparing one tensor against its committed value (tol: relative)."""
    if tuple(got.shape) != tuple(want.shape):
        return f"    {name:42s} shape {tuple(got.shape)} != committed {tuple(want.shape)}  FAIL", False
    if not want.is_floating_point():
        diff = int((got.long() != want.long()).sum())
        first = ""
        if diff:
            flat = (got.long() != want.long()).reshape(-1).nonzero()[0].item()
            first = f" (first at flat index {flat})"
        return f"    {name:42s} {'equal' if diff == 0 else f'{diff} differ{first}  FAIL'}", diff == 0
    got, want = got.double(), want.double()
    abs_diff = float((got - want).abs().max()) if want.numel() else 0.0
    scale = float(want.abs().max()) if want.numel() else 0.0
    rel = abs_diff / scale if scale > 0 else (0.0 if abs_diff == 0 else float("inf"))
    tol = tolerance(name) if tol is None else tol
    ok = rel <= tol
    return f"    {name:42s} max abs {abs_diff:.3e}  max rel {rel:.3e}  (tol {tol:g}){'' if ok else '  FAIL'}", ok



def same_weights(label, saved, want, lines):
    """Whether the file's tensors `saved` are exactly `want`; differences go to `lines`."""
    ok = True
    for k in sorted(set(saved) | set(want)):
        if k not in saved or k not in want:
            lines.append(f"    {label}: {k} {'missing' if k not in saved else 'unexpected'}")
            ok = False
        elif not torch.equal(saved[k], want[k]):
            line, _ = compare(f"{label} {k}", want[k], saved[k], tol=0.0)
            lines.append(line)
            ok = False
    return ok

def check_fixture(model, out, committed, fixture_dir):
    ok = True
    lines = []
    weights_ok = True
    for k in sorted(set(committed) | set(out)):
        if k not in out:
            lines.append(f"    {k:42s} in the committed file only")
            ok = False
        elif k not in committed:
            lines.append(f"    {k:42s} not in the committed file")
            ok = False
        else:
            line, good = compare(k, out[k], committed[k])
            lines.append(line)
            ok &= good
    # The weights used against both committed weight files.
    state = model.state_dict()
    aliases = tied_aliases(model)
    st = fixture_dir / "model.safetensors"
    if st.is_file():
        want = {k: v for k, v in state.items() if k not in aliases}
        weights_ok &= same_weights("model.safetensors", load_file(str(st)), want, lines)
    pt = fixture_dir / "model.pt"
    if pt.is_file():
        saved = torch.load(str(pt), map_location="cpu", weights_only=True)
        weights_ok &= same_weights("model.pt", saved, state, lines)
        for alias, first in aliases.items():
            if alias in saved and first in saved and saved[alias].data_ptr() != saved[first].data_ptr():
                lines.append(f"    model.pt: {alias} is not tied to {first}")
                weights_ok = False
    if weights_ok:
        lines.append("    weights: model.safetensors and model.pt equal the weights used")
    ok &= weights_ok
    print("\n".join(lines))
    return ok


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Regenerate or check the golden fixtures with the PyTorch reference.",
        epilog="See the module docstring (python3 -m pydoc tests/golden/make_golden.py) for details.",
    )
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("fixtures", nargs="*",
                        help="fixture folder names under --golden-dir (or paths); default: all of this mode's")
    common.add_argument("--golden-dir", type=Path, default=Path(__file__).resolve().parent,
                        help="folder holding the fixture folders (default: this script's folder)")
    common.add_argument("--check", action="store_true",
                        help="recompute and compare with the committed files; write nothing")
    common.add_argument("--out-dir", type=Path,
                        help="write the fixtures to OUT_DIR/<name>/ instead of in place")
    common.add_argument("--reuse-weights", action=argparse.BooleanOptionalAction, default=True,
                        help="untrained fixtures: take the committed model.safetensors (default) or, "
                             "with --no-reuse-weights, build the model after torch.manual_seed(SEED)")
    common.add_argument("--seed", type=int,
                        help="model seed (inputs use SEED+1); default: ref-tiny 7, gpt-tiny 0, else 0")
    common.add_argument("--fresh-inputs", action="store_true",
                        help="draw inputs from the seed / --prompt even where committed ones exist")
    common.add_argument("--kind", choices=("untrained", "trained"),
                        help="fixture kind (default: from expected.safetensors, else the folder name)")
    common.add_argument("--batch", type=int, default=UNTRAINED_SHAPE[0], help="untrained: B of fresh inputs")
    common.add_argument("--seq-len", type=int, default=UNTRAINED_SHAPE[1], help="untrained: T of fresh inputs")
    common.add_argument("--prompt", help="trained: prompt text when there is no committed prompt")
    common.add_argument("--greedy-tokens", type=int, default=GREEDY_TOKENS,
                        help=f"trained: tokens to continue greedily (default {GREEDY_TOKENS})")
    b = sub.add_parser("bdh", parents=[common], help="BDH fixtures (ref-*) from pathwaycom/bdh bdh.py")
    b.add_argument("--bdh-py", required=True, metavar="PATH", help="bdh.py of pathwaycom/bdh (commit 714bc80)")
    g = sub.add_parser("gpt", parents=[common], help="GPT-2 fixtures (gpt-*) from karpathy/nanoGPT model.py")
    g.add_argument("--nanogpt-model-py", required=True, metavar="PATH",
                   help="model.py of karpathy/nanoGPT (commit 3adf61e)")
    args = p.parse_args(argv)
    if args.check and args.out_dir:
        p.error("--check writes nothing; drop --out-dir")
    if args.batch < 1 or args.seq_len < 1 or args.greedy_tokens < 0:
        p.error("--batch and --seq-len must be >= 1, --greedy-tokens >= 0")
    return args


def fixture_dirs(args):
    prefix = MODES[args.mode][3]
    if args.fixtures:
        dirs = []
        for f in args.fixtures:
            d = Path(f) if (Path(f).is_dir() and os.sep in f) else args.golden_dir / f
            if not d.is_dir():
                raise InputError(f"no fixture folder {d}")
            dirs.append(d)
        return dirs
    if not args.golden_dir.is_dir():
        raise InputError(f"no folder {args.golden_dir}")
    dirs = sorted(d for d in args.golden_dir.iterdir() if d.is_dir() and d.name.startswith(prefix))
    if not dirs:
        raise InputError(f"no {prefix}* fixture folders in {args.golden_dir}")
    return dirs


def main(argv=None):
    args = parse_args(argv)
    try:
        torch.set_default_dtype(torch.float32)
        ref = getattr(args, MODES[args.mode][0])
        print(f"torch {torch.__version__} (the committed fixtures: {TORCH_VERSION_OF_FIXTURES}), CPU, float32")
        if not torch.__version__.startswith(TORCH_VERSION_OF_FIXTURES):
            print("  note: another torch version may differ from the committed files in the last bits")
        module = import_reference(ref, args.mode)
        print(f"reference: {Path(ref).expanduser()}")
        all_ok = True
        for d in fixture_dirs(args):
            print(f"{d.name}:")
            model, out, committed = run_fixture(module, args.mode, d, args)
            if args.check:
                ok = check_fixture(model, out, committed, d)
                print(f"  {d.name}: {'ok' if ok else 'OUTSIDE TOLERANCE'}")
                all_ok &= ok
            else:
                write_fixture(model, out, d, (args.out_dir / d.name) if args.out_dir else d)
    except InputError as e:
        print(f"make_golden.py: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print("all within tolerance" if all_ok else "some values are outside tolerance")
        return 0 if all_ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
