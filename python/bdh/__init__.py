"""BDH ("The Dragon Hatchling") language models from Python.

The engine and the microscope of the ``bdh`` command, on the same library (no second
implementation): load any model ``bdh --model`` takes, run it, cache and edit its
activations, step it with a synapse state you can save and fork, call every
``bdh inspect`` analysis, and train.

    >>> import bdh
    >>> model = bdh.load("tests/golden/recall-trained")
    >>> logits, cache = model.run_with_cache("Ann has a cat.", sites=["x", "rho"])
    >>> cache["x"].shape            # (layers, heads, tokens, neurons)
    (2, 2, 14, 1024)

Arrays come back as NumPy copies the caller owns. The engine computes with the GIL
released; Ctrl-C stops generation and training (a run saves first).
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _bdh

__all__ = ["load", "Model", "State", "Edit", "Patch", "train", "inspect", "inspect_help", "graph", "set_threads",
           "SITES", "INSPECT_COMMANDS", "RUN_COMMANDS", "GRAPH_COMMANDS"]

#: The sites ``run_with_cache`` can keep.
SITES = ("x", "y", "xy", "attn", "out", "embed", "rho")

#: The ``bdh inspect`` commands that run on a model (``Model.inspect``) and those
#: that read runs (``bdh.inspect``: training, seeds; induction with ``run=``).
INSPECT_COMMANDS = ("sparsity", "graph", "synapses", "ablate", "overlap", "patch", "induction", "top", "path",
                    "complexity", "connectome", "geometry")
RUN_COMMANDS = ("training", "seeds", "induction")

Tokens = Union[str, bytes, Sequence[int], np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]


def set_threads(n: int) -> None:
    """Sizes the engine's pool of threads (by default one per core). Call it before
    anything runs: the pool is made once per process."""
    _bdh.set_threads(n)


def Edit(site: str, layer: Optional[int] = None, head: Optional[int] = None, neuron: Optional[int] = None,
         position: Optional[int] = None, value: Optional[float] = None) -> Dict[str, Any]:
    """One intervention, the engine's ``Edit`` value: at ``site`` (``"x"``, ``"y"``,
    ``"xy"``, ``"rho"`` — row ``neuron`` of ρ before the step at ``position`` — or
    ``"out"``, a layer's output, ``neuron`` one of its D dimensions), in ``layer``,
    ``head``, ``neuron`` and ``position`` (``None``: every one), set to 0 (``value``
    ``None``: ablate) or to ``value`` (patch). x, y and x⊙y take values ≥ 0."""
    if value is not None and not math.isfinite(float(value)):
        raise ValueError(f"an edit's value must be finite, not {value}")
    return {"site": site, "layer": _index(layer, "layer"), "head": _index(head, "head"),
            "neuron": _index(neuron, "neuron"), "position": _index(position, "position"),
            "action": "zero" if value is None else {"set": float(value)}}


def _index(value: Any, what: str) -> Optional[int]:
    """An index ≥ 0 (any integer type, NumPy's too), or None."""
    if value is None:
        return None
    i = operator.index(value)
    if i < 0:
        raise ValueError(f"{what} {i} is negative")
    return i


def Patch(site: str, layer: int, values: np.ndarray, head: Optional[int] = None,
          neurons: Optional[Sequence[int]] = None, positions: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """Activation patching: ``site`` (``"x"``, ``"y"``, ``"xy"`` or ``"out"``) of ``layer``
    takes ``values`` from another run of the model — that run's cache of the site at
    this layer, ``cache[site][layer]``: (H, T, N) for x, y and x⊙y, (T, D) for out — at
    ``positions`` ``(start, end)`` (default all of ``values``), for ``head`` and
    ``neurons`` (default all; for out, dimensions of D). Passed wherever edits are; the
    parallel forward applies it."""
    if site not in ("x", "y", "xy", "out"):
        raise ValueError(f"a patch's site is x, y, xy or out, not {site!r} (ρ is carried by states: State.fork)")
    if site == "out" and head is not None:
        raise ValueError("a layer's output has no heads: leave head out (neurons= picks dimensions of D)")
    values = np.asarray(values)
    if values.dtype.kind not in "fiu":
        raise ValueError(f"a patch's values must be real numbers, not {values.dtype}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(values).all() or (site != "out" and (values < 0).any()):
        raise ValueError(f"a patch's values must be finite{'' if site == 'out' else ' and ≥ 0 (ReLU outputs)'}")
    if values.ndim != (2 if site == "out" else 3):
        raise ValueError(f"a patch of {site!r} takes one layer's values, (T, D) for out and (H, T, N) else, "
                         f"not {values.shape}")
    length = values.shape[0] if site == "out" else values.shape[1]
    start, end = (_index(p, "position") for p in positions) if positions is not None else (0, length)
    if not start < end <= length:
        raise ValueError(f"a patch's positions ({start}, {end}) must be a non-empty part of its values' {length}")
    return {"site": site, "layer": _index(layer, "layer"), "head": _index(head, "head"),
            "neurons": None if neurons is None else [_index(n, "neuron") for n in neurons],
            "positions": (start, end), "values": values}


def _split(edits: Optional[Iterable[Dict[str, Any]]]) -> Tuple[str, List[tuple]]:
    """Edits as the engine takes them: the ``Edit`` values as JSON, the patches as tuples."""
    plain, patches = [], []
    for e in edits or []:
        if "values" in e:
            patches.append((e["site"], e["layer"], e.get("head"), e.get("neurons"), *e["positions"], e["values"]))
        else:
            plain.append(e)
    try:
        return json.dumps(plain, allow_nan=False), patches
    except (TypeError, ValueError) as error:
        raise ValueError(f"edits are bdh.Edit values: {error}") from None


def _edits_json(edits: Optional[Iterable[Dict[str, Any]]]) -> str:
    """The ``Edit`` values as JSON, refusing patches (only the parallel forward takes them)."""
    plain, patches = _split(edits)
    if patches:
        raise ValueError("activation patches apply to the parallel forward (model(...), loss, run_with_cache), "
                         "not to recurrent steps or edits of ρ")
    return plain


def _argv(command: str, options: Dict[str, Any]) -> List[str]:
    """``bdh inspect`` arguments from keyword options: ``snake_case=value`` is
    ``--snake-case value``; True is a bare flag, False and None leave it out; a list
    repeats the flag."""
    if "threads" in options:
        raise ValueError("the package's threads are set once per process: bdh.set_threads(n), before anything runs")
    if "device" in options:
        raise ValueError("the package runs on the CPU: leave device out")
    argv = [command]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, os.fspath(v) if isinstance(v, os.PathLike) else str(v)]
        else:
            argv += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return argv


def inspect_help(command: str) -> str:
    """Every option of ``bdh inspect COMMAND``, as its ``--help`` prints it."""
    return _bdh.inspect_help(command)


def inspect(command: str, **options: Any) -> Dict[str, Any]:
    """A ``bdh inspect`` command that reads runs rather than one model: ``training``
    (``run=``), ``seeds`` (``models=[...]``), ``induction`` (``run=``). Returns the
    JSON the command writes with ``--json``, as a dict. For a model's analyses use
    ``Model.inspect`` or its named methods."""
    if command not in RUN_COMMANDS:
        raise ValueError(f"bdh.inspect runs {', '.join(RUN_COMMANDS)}; {command!r} runs on a model: "
                         f"model.inspect({command!r}, ...)")
    return json.loads(_bdh.inspect_runs(_argv(command, options)))


#: The ``bdh graph`` commands ``bdh.graph`` runs.
GRAPH_COMMANDS = ("build", "run", "prune", "stats")


def graph(command: str, **options: Any) -> Union[Dict[str, Any], str]:
    """``bdh graph COMMAND`` with ``options`` as its flags (as ``Model.inspect`` maps
    them), run in this process, its summary on standard output: ``build`` returns the
    graph file it wrote (``out=``); ``run``, ``prune`` and ``stats`` the JSON they write
    with ``--json``, as a dict (``run`` with ``against=`` holds the comparison whatever
    it finds)."""
    if command not in GRAPH_COMMANDS:
        raise ValueError(f"no graph command {command!r}: one of {', '.join(GRAPH_COMMANDS)}")
    if "json" in options:
        raise ValueError("the JSON is what is returned: leave json= out")
    if command == "build":
        _bdh.run_command(["graph", *_argv(command, options)])
        return os.fspath(options["out"])
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "report.json")
        _bdh.run_command(["graph", *_argv(command, options), "--json", out])
        with open(out) as f:
            return json.load(f)


def load(path: PathLike, config: Optional[PathLike] = None, tokenizer: Optional[PathLike] = None) -> "Model":
    """Loads what ``--model`` takes: a run directory (its best checkpoint), a
    checkpoint directory, a ``model.safetensors`` or a PyTorch ``.pt`` — BDH or the
    GPT baseline. ``config``: the config JSON if it is not beside the weights;
    ``tokenizer``: a tokenizer.json, else the run's or checkpoint's, else bytes."""
    return Model(_bdh.Engine(os.fspath(path), None if config is None else os.fspath(config),
                             None if tokenizer is None else os.fspath(tokenizer)))


class Model:
    """A loaded model: call it on tokens for logits, cache or edit its activations,
    step it, generate, and look inside it. Made by ``bdh.load``."""

    def __init__(self, engine: "_bdh.Engine"):
        self._engine = engine
        self._edits: List[Dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<bdh.Model {self._engine.describe()} from {self._engine.source}>"

    @property
    def source(self) -> str:
        """The checkpoint or file the model was read from."""
        return self._engine.source

    @property
    def config(self) -> Dict[str, Any]:
        """The model's config (bdh.py's keys, or nanoGPT's for the GPT; ``family`` says which)."""
        return json.loads(self._engine.config_json())

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size()

    def params(self) -> Dict[str, np.ndarray]:
        """Every trained tensor by its name in the reference's state_dict, e.g.
        ``encoder`` (H, D, N): copies (changing them does not change the model)."""
        return self._engine.params()

    # -- tokens ----------------------------------------------------------------------
    def encode(self, text: Union[str, bytes]) -> List[int]:
        """The model's tokens of ``text`` (bytes, or its BPE)."""
        return self._engine.encode(text.encode() if isinstance(text, str) else bytes(text))

    def decode(self, tokens: Iterable[int]) -> str:
        """The text of ``tokens`` (invalid UTF-8 replaced)."""
        return bytes(self._engine.decode([int(t) for t in tokens])).decode("utf-8", errors="replace")

    def _ids(self, tokens: Tokens) -> np.ndarray:
        if isinstance(tokens, (str, bytes)):
            tokens = self.encode(tokens)
        ids = np.asarray(tokens)
        if ids.size == 0:
            raise ValueError("no tokens")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"tokens must be integers, not {ids.dtype}")
        if ids.ndim not in (1, 2):
            raise ValueError(f"tokens must be (T,) or (B, T), not {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"a token outside the vocabulary 0..{self.vocab_size}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def _split(self, edits: Optional[Iterable[Dict[str, Any]]], t: int) -> Tuple[str, List[tuple]]:
        """This block's edits and `edits`, as the engine takes them, the patches'
        shapes checked against the model and a run of `t` tokens."""
        plain, patches = _split(self._edits + list(edits or []))
        if patches:
            c = self.config
            if c["family"] != "bdh":
                raise ValueError(f"patches act on BDH's neurons; this model is a {c['family']}")
            n = c["mlp_internal_dim_multiplier"] * c["n_embd"] // c["n_head"]
            for site, layer, head, neurons, start, end, values in patches:
                want = (c["n_embd"],) if site == "out" else (c["n_head"], n)
                got = values.shape[1:] if site == "out" else (values.shape[0], values.shape[2])
                if got != want:
                    raise ValueError(f"a patch of {site} takes values {'(T, D)' if site == 'out' else '(H, T, N)'} "
                                     f"of this model, {want} besides T; these are {values.shape}")
                if start >= t:
                    raise ValueError(f"a patch's positions ({start}, {end}) start past the run's {t} tokens")
        return plain, patches

    # -- the parallel forward --------------------------------------------------------
    def __call__(self, tokens: Tokens, edits: Optional[Iterable[Dict[str, Any]]] = None) -> np.ndarray:
        """Logits of the parallel forward: (T, V) for one sequence (a text or (T,)
        tokens), (B, T, V) for a batch (B, T); with ``edits`` and those of an
        enclosing ``with model.edits(...)``."""
        ids = self._ids(tokens)
        all_edits = self._edits + list(edits or [])
        plain, patches = self._split(edits, ids.shape[-1])
        if _bdh.edits_touch_rho(plain):
            if ids.ndim != 1:
                raise ValueError("edits of ρ run the recurrent steps: give one sequence")
            return self._engine.run_stepped([int(t) for t in ids], _edits_json(all_edits))
        logits = self._engine.forward(ids.reshape(1, -1) if ids.ndim == 1 else ids, plain, patches)
        return logits[0] if ids.ndim == 1 else logits

    def loss(self, tokens: Tokens, targets: Tokens, edits: Optional[Iterable[Dict[str, Any]]] = None) -> float:
        """The mean cross-entropy (nats per token) of the forward on ``tokens``
        against ``targets``, both (T,) or (B, T); with ``edits`` and those of an
        enclosing ``with model.edits(...)`` (not of ρ: the parallel forward holds none)."""
        ids, want = self._ids(tokens), self._ids(targets)
        return self._engine.loss(ids.reshape(1, -1) if ids.ndim == 1 else ids,
                                 want.reshape(1, -1) if want.ndim == 1 else want,
                                 *self._split(edits, ids.shape[-1]))

    def run_with_cache(self, text: Tokens, sites: Optional[Sequence[str]] = None,
                       edits: Optional[Iterable[Dict[str, Any]]] = None) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """Runs one sequence and keeps its activations: logits (T, V) and a dict of
        ``sites`` (default all of ``bdh.SITES``): ``x``, ``y``, ``xy`` (L, H, T, N),
        ``attn`` the normalised attention reads (L, H, T, D), ``out`` each layer's
        output (L, T, D), ``embed`` the residual entering layer 0 (T, D), ``rho`` the
        synapse state ρ after the text (L, H, N, D). With ``edits`` (x, y, x⊙y, out)
        and patches (``bdh.Patch``)."""
        ids = self._ids(text)
        if ids.ndim != 1:
            raise ValueError("run_with_cache reads one sequence: (T,) tokens or a text")
        sites = [sites] if isinstance(sites, str) else list(SITES if sites is None else sites)
        if not sites:
            raise ValueError(f"no sites asked for: name some of {', '.join(SITES)}, or leave sites out for all")
        return self._engine.run_with_cache(ids.reshape(1, -1), sites, *self._split(edits, len(ids)))

    def run_with_edits(self, text: Tokens, edits: Iterable[Dict[str, Any]]) -> np.ndarray:
        """Logits (T, V) of one sequence with ``edits`` (``bdh.Edit`` values): the
        parallel forward, or the recurrent steps where an edit is of ρ."""
        ids = self._ids(text)
        if ids.ndim != 1:
            raise ValueError("run_with_edits reads one sequence: (T,) tokens or a text")
        return self(ids, edits)

    @contextlib.contextmanager
    def edits(self, edits: Iterable[Dict[str, Any]]) -> Iterator["Model"]:
        """Within ``with model.edits([...]):`` every forward, step and generation of
        this model applies these edits too."""
        added = list(edits)
        self._engine.check_edits(_split(added)[0])  # a bad edit fails here, not at the first call
        self._edits += added
        try:
            yield self
        finally:
            del self._edits[len(self._edits) - len(added):]

    # -- recurrent steps and generation -----------------------------------------------
    def new_state(self, dtype: str = "f32") -> "State":
        """The empty state of a new sequence, its ρ stored as ``dtype``: "f32", or
        "bf16" / "f16" (half the memory, read and summed in f32, each write rounded;
        ``bdh generate --state-dtype``). BDH only beyond f32; a model whose decay fades
        more slowly than the type resolves refuses it."""
        return State(self, _bdh.Session(self._engine, None, dtype))

    def load_state(self, path: PathLike, dtype: Optional[str] = None) -> "State":
        """A state saved by ``State.save`` or ``bdh generate --save-state``, its ρ in
        the type the file holds, or converted to ``dtype`` ("f32", "bf16", "f16")."""
        return State(self, _bdh.Session(self._engine, os.fspath(path), dtype))

    def _own(self, state: "State") -> "_bdh.Session":
        if not isinstance(state, State) or state.model._engine is not self._engine:
            raise ValueError("this state belongs to another model: make it with this model's new_state or load_state")
        return state._session

    def step(self, state: "State", token: int) -> np.ndarray:
        """Reads ``token`` into ``state``; the logits for the next token (V,)."""
        token = operator.index(token)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"token {token} is outside the vocabulary 0..{self.vocab_size}")
        return self._own(state).step(token, _edits_json(self._edits))

    def prefill(self, state: "State", tokens: Tokens) -> np.ndarray:
        """Reads ``tokens`` (a text or ids) into ``state``; the logits after the last (V,)."""
        ids = self._ids(tokens)
        if ids.ndim == 2 and ids.shape[0] != 1:
            raise ValueError("a state reads one sequence: give (T,) tokens or a text")
        return self._own(state).prefill([int(t) for t in ids.reshape(-1)], _edits_json(self._edits))

    def generate(self, prompt: Union[str, bytes], max_tokens: int = 256, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int = 0,
                 stop: Union[str, Sequence[str], None] = None, state: Optional["State"] = None) -> str:
        """The text generated after ``prompt`` (not echoed), with ``bdh generate``'s
        options and defaults: the same seed gives the same text as
        ``bdh generate --prompt P --seed S --no-echo``. ``stop``: end at this string
        (or any of these), not included. ``state``: continue the text it has read
        (it then holds the prompt and the output too); else a fresh one."""
        session = self._own(state) if state is not None else self.new_state()._session
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        for name, value in (("max_tokens", max_tokens), ("top_k", top_k), ("seed", seed)):
            if operator.index(value) < 0:
                raise ValueError(f"{name} must be ≥ 0, not {value}")
        text, _, _ = session.generate(prompt.encode() if isinstance(prompt, str) else bytes(prompt), max_tokens,
                                      temperature, top_k, top_p, min_p, repetition_penalty, seed, stops,
                                      _edits_json(self._edits))
        return bytes(text).decode("utf-8", errors="replace")

    # -- the microscope ------------------------------------------------------------------
    def inspect(self, command: str, **options: Any) -> Dict[str, Any]:
        """``bdh inspect COMMAND`` on this model with ``options`` as its flags
        (``window=128`` is ``--window 128``, ``prompt="…"`` the text inline, ``text=``
        a file, a list repeats a flag, True is a bare flag): the dict it writes with
        ``--json``, the same numbers. ``bdh.inspect_help(COMMAND)`` lists the options."""
        if command not in INSPECT_COMMANDS:
            raise ValueError(f"no inspect command {command!r} on a model: one of {', '.join(INSPECT_COMMANDS)}")
        return json.loads(self._engine.inspect(_argv(command, options)))


def _analysis(command: str) -> Callable[..., Dict[str, Any]]:
    def run(self: Model, **options: Any) -> Dict[str, Any]:
        return self.inspect(command, **options)
    run.__name__ = command
    run.__qualname__ = f"Model.{command}"
    try:
        run.__doc__ = f"``bdh inspect {command}`` on this model (see ``Model.inspect``).\n\n" + _bdh.inspect_help(command)
    except ValueError:
        run.__doc__ = f"``bdh inspect {command}`` on this model (see ``Model.inspect``)."
    return run


for _command in INSPECT_COMMANDS:
    setattr(Model, _command, _analysis(_command))


class State:
    """One sequence's recurrent state: BDH's synapse state ρ (a GPT's KV cache).
    Made by ``Model.new_state`` or ``Model.load_state``; read into by
    ``Model.step``, ``Model.prefill`` and ``Model.generate(state=...)``."""

    def __init__(self, model: Model, session: "_bdh.Session"):
        self.model = model
        self._session = session

    def __repr__(self) -> str:
        return f"<bdh.State at position {self.pos}, {self.nbytes} bytes>"

    @property
    def pos(self) -> int:
        """Tokens read so far."""
        return self._session.pos

    @property
    def nbytes(self) -> int:
        return self._session.nbytes

    @property
    def dtype(self) -> str:
        """How ρ is stored: "f32", "bf16" or "f16"."""
        return self._session.dtype

    @property
    def rho(self) -> np.ndarray:
        """A copy of ρ, (L, H, N, D) (BDH only)."""
        return self._session.rho

    def fork(self) -> "State":
        """An independent copy: both go on from here."""
        return State(self.model, self._session.fork())

    def save(self, path: PathLike) -> None:
        """Saves it (atomically) in the format of ``bdh generate --save-state``."""
        self._session.save(os.fspath(path))

    def load(self, path: PathLike) -> "State":
        """Replaces what it holds with the state saved at ``path`` (by ``save`` or
        ``bdh generate --save-state``, from this model), in this state's type (``dtype``,
        converted if the file holds another); returns it."""
        self._session = _bdh.Session(self.model._engine, os.fspath(path), self.dtype)
        return self


def train(preset: str = "recall", out: Optional[PathLike] = None, *, set: Union[Dict[str, Any], Sequence[str], None] = None,
          data: Optional[PathLike] = None, val_data: Optional[PathLike] = None, tokenizer: Optional[PathLike] = None,
          init_from: Optional[PathLike] = None, continual: Optional[str] = None, resume: Optional[PathLike] = None,
          callback: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None, quiet: bool = False) -> Dict[str, Any]:
    """Trains as ``bdh train`` does: ``preset`` (a name or a run-config TOML) into the
    run directory ``out``, or continues ``resume``. ``set``: config overrides, as a
    dict ``{"training.max_steps": 200}`` or ``["training.max_steps=200"]``;
    ``data``/``val_data``/``tokenizer``/``init_from``/``continual`` as the flags of
    that name. ``callback(metrics)`` runs after every evaluation with its numbers
    (step, val_loss, …); returning False stops the run there (it saves first). Ctrl-C
    stops it the same way, then raises KeyboardInterrupt. Each evaluation prints a line
    (``step 250: val loss 1.2345, 1.781 bits/byte``) unless ``quiet``. Returns the
    outcome: ``dir``, ``step``, ``interrupted``, ``last_eval``, ``losses``, ``seconds``."""
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, not {type(callback).__name__}")
    overrides = [f"{k}={_toml(v)}" for k, v in set.items()] if isinstance(set, dict) else list(set or [])
    if continual is not None:
        overrides.append(f"training.continual={continual}")
    def on_eval(metrics: Dict[str, Any]) -> Optional[bool]:
        if not quiet:
            line = f"step {metrics['step']}: val loss {metrics['val_loss']:.4f}, {metrics['bits_per_byte']:.3f} bits/byte"
            if metrics.get("answer_accuracy") is not None:
                line += f", answer accuracy {100 * metrics['answer_accuracy']:.1f}%"
            print(line, flush=True)
        return callback(metrics) if callback is not None else None

    path = lambda p: None if p is None else os.fspath(p)
    return json.loads(_bdh.train(preset, overrides, path(out), path(data), path(val_data), path(tokenizer),
                                 path(init_from), path(resume), on_eval))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
