"""Shared by the package's tests: the repository's golden models, a reader of their
expected tensors, and the `bdh` command to compare against."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
TEXT = ROOT / "examples" / "text.txt"

DTYPES = {"F32": np.float32, "I64": np.int64}


def tensors(path):
    """The tensors of a safetensors file, by name."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def _cli():
    for candidate in [os.environ.get("BDH"), ROOT / "target" / "release" / "bdh", ROOT / "target" / "debug" / "bdh",
                      shutil.which("bdh")]:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def cli():
    """Runs `bdh ARGS…` and returns its standard output; skips (with the reason) when
    no `bdh` binary is built, unless BDH_REQUIRE_CLI is set, when it fails."""
    exe = _cli()
    if exe is None:
        message = "no bdh binary to compare against (build it: cargo build --release, or set BDH)"
        if os.environ.get("BDH_REQUIRE_CLI"):
            pytest.fail(message)
        pytest.skip(message)

    def run(*args):
        done = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run
