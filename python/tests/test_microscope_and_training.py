"""The microscope's analyses from Python (the numbers of `bdh inspect … --json`),
and training with a callback, stopped, resumed and inspected."""

import json

import pytest

import bdh
from conftest import GOLDEN, TEXT

RECALL = GOLDEN / "recall-trained"
EXAMPLES = TEXT.parent


def without_provenance(report):
    return {k: v for k, v in report.items() if k != "provenance"}


@pytest.mark.parametrize("command, options", [
    ("sparsity", {"text": TEXT, "window": 128}),
    ("graph", {"head": [0], "quantiles": [0.99, 0.999]}),
    ("synapses", {"layer": 1, "head": 0, "text": TEXT}),
    ("ablate", {"neurons": ["0:0:5", "1:1:7"], "rows": 2}),
    ("overlap", {"concept": EXAMPLES / "money.txt", "other": EXAMPLES / "nature.txt",
                 "background": EXAMPLES / "facts.txt", "draws": 50}),
    ("patch", {"pairs": 4}),
    ("induction", {"length": 32, "sequences": 4}),
    ("top", {"text": TEXT, "layer": 1, "head": 0, "neuron": 17, "k": 8}),
    ("path", {"prompt": "Ann has a cat. The cat of Ann", "target": " "}),
    ("complexity", {"text": TEXT, "tokens": 512, "shuffles": 4}),
    ("connectome", {"text": TEXT, "tokens": 1024, "neurons": 32, "rank": 2}),
    ("geometry", {"statements": 100}),
])
def test_analyses_return_the_command_s_numbers(cli, tmp_path, command, options):
    model = bdh.load(RECALL)
    ours = getattr(model, command)(**options)
    out = tmp_path / "report.json"
    flags = []
    for key, value in options.items():
        for v in value if isinstance(value, list) else [value]:
            flags += [f"--{key.replace('_', '-')}", v]
    cli("inspect", command, "--model", RECALL, *flags, "--json", out)
    theirs = json.loads(out.read_text())
    if command == "geometry":
        # (t-SNE's map is not bit-reproducible from run to run; everything else is)
        ours.pop("map", None), theirs.pop("map", None)
    assert without_provenance(ours) == without_provenance(theirs)
    assert ours["provenance"]["model"] == model.source == str(RECALL)


def test_the_graph_form_from_python_is_the_command_s(cli, tmp_path):
    normfree = GOLDEN / "normfree-small"
    brain = bdh.graph("build", model=normfree, out=tmp_path / "brain.safetensors")
    assert brain == str(tmp_path / "brain.safetensors")
    stats = bdh.graph("stats", graph=brain)
    cli("graph", "stats", "--graph", brain, "--json", tmp_path / "stats.json")
    assert stats == json.loads((tmp_path / "stats.json").read_text())
    run = bdh.graph("run", graph=brain, text=TEXT, max_tokens=64, against=normfree)
    # the exact graphs' logits are the tensor form's (the command exits 1 past 1e-5)
    assert run["tensor_form"]["logits_max_rel_diff"] < 1e-5
    assert run["tensor_form"]["loss_nats"] == pytest.approx(run["loss_nats"], rel=1e-5)
    with pytest.raises(ValueError, match="no graph command"):
        bdh.graph("draw")


def test_every_analysis_has_its_help_and_unknown_ones_are_refused():
    for command in bdh.INSPECT_COMMANDS + bdh.RUN_COMMANDS:
        assert "Usage:" in bdh.inspect_help(command)
    assert "--window" in bdh.Model.sparsity.__doc__
    model = bdh.load(RECALL)
    with pytest.raises(ValueError, match="no inspect command"):
        model.inspect("seeds", models=[RECALL])
    with pytest.raises(ValueError, match="runs on a model"):
        bdh.inspect("sparsity", prompt="abc")
    with pytest.raises(ValueError, match="--json"):
        model.inspect("sparsity", prompt="abc", json="x.json")


def test_training_calls_back_stops_resumes_and_is_inspected(tmp_path, capsys):
    out = tmp_path / "run"
    seen = []

    def first_evaluation_only(metrics):
        seen.append(metrics)
        return False

    overrides = {"training.max_steps": 20, "training.eval_interval": 10, "training.eval_batches": 1,
                 "training.keep_every": 10, "training.sample_interval": 0}
    stopped = bdh.train("tiny", out, set=overrides, callback=first_evaluation_only)
    assert stopped["interrupted"] and stopped["step"] == 10 and stopped["dir"] == str(out)
    assert [m["step"] for m in seen] == [10] and seen[0]["val_loss"] > 0
    assert len(stopped["losses"]) == 10 and stopped["last_eval"]["step"] == 10
    assert capsys.readouterr().out.startswith("step 10: val loss ")

    steps = []
    done = bdh.train(resume=out, callback=lambda m: steps.append(m["step"]), quiet=True)
    assert not done["interrupted"] and done["step"] == 20 and steps == [20]
    assert capsys.readouterr().out == ""
    model = bdh.load(out)
    assert model("hello").shape == (5, 256)
    # rich or lazy: the models the run kept (steps 0, 10 and 20)
    report = bdh.inspect("training", run=out, prompt="Ann has a cat.")
    assert [m["step"] for m in report["steps"]] == [0, 10, 20]

    with pytest.raises(ValueError, match="out="):
        bdh.train("tiny")
    with pytest.raises(ValueError):
        bdh.train("no-such-preset", tmp_path / "other")

    def broken(metrics):
        raise RuntimeError("the callback failed")

    with pytest.raises(RuntimeError, match="the callback failed"):
        bdh.train("tiny", tmp_path / "broken", set=overrides, callback=broken)
    # the run saved before the error was raised
    assert bdh.load(tmp_path / "broken")("a").shape == (1, 256)


def test_the_example_runs_as_the_readme_says(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    plot = tmp_path / "curve.png"
    done = subprocess.run([sys.executable, "examples/concept_neurons.py", "--top", "32", "--plot", plot],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "most selective for place" in done.stdout and "place answers right" in done.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in done.stdout
    else:
        assert plot.stat().st_size > 1000


def test_ctrl_c_stops_training_after_saving_and_stops_generation(tmp_path):
    import subprocess
    import sys
    # SIGINT arrives while the engine trains (no callback, the GIL released), as Ctrl-C does
    script = """
import os, signal, sys, threading, bdh
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    bdh.train("recall", sys.argv[1], set={"training.max_steps": 100000, "training.eval_interval": 100000})
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""
    done = subprocess.run([sys.executable, "-c", script, tmp_path / "run"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "KeyboardInterrupt", done.stderr
    # stopped after a few steps, and saved where it stopped
    step = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())["state"]["step"]
    assert 1 <= step < 100000
    assert bdh.train(resume=tmp_path / "run", set=[f"training.max_steps={step + 2}"])["step"] == step + 2
    script = """
import os, signal, threading, bdh
model = bdh.load(%r)
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    model.generate("ROMEO:", max_tokens=10_000_000)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
""" % str(GOLDEN / "ref-small-trained")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "KeyboardInterrupt", done.stderr

    with pytest.raises(ValueError, match="callable"):
        bdh.train("tiny", tmp_path / "other", callback=3)
    assert not (tmp_path / "other").exists()
