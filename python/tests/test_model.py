"""The model from Python: the reference's numbers, the recurrent form, caches, edits,
generation and saved states — each against the fixtures or the `bdh` command."""

import numpy as np
import pytest

import bdh
from conftest import GOLDEN, TEXT, tensors


@pytest.mark.parametrize("name", ["ref-tiny", "gpt-tiny"])
@pytest.mark.parametrize("weights", ["model.safetensors", "model.pt"])
def test_logits_and_loss_equal_the_references(name, weights):
    want = tensors(GOLDEN / name / "expected.safetensors")
    model = bdh.load(GOLDEN / name / weights)
    logits = model(want["input_ids"])
    assert logits.shape == want["logits"].shape and logits.dtype == np.float32
    # bdh.py's and nanoGPT's logits: max abs 1.6e-7 and 1.2e-7 here
    np.testing.assert_allclose(logits, want["logits"], atol=2e-6, rtol=0)
    assert model.loss(want["input_ids"], want["targets"]) == pytest.approx(float(want["loss"][0]), abs=2e-6)
    # one sequence in, (T, V) out (alone, its sums may be blocked differently)
    np.testing.assert_allclose(model(want["input_ids"][1]), logits[1], atol=1e-6, rtol=0)


def test_greedy_generation_equals_bdh_py():
    want = tensors(GOLDEN / "ref-small-trained" / "expected.safetensors")
    model = bdh.load(GOLDEN / "ref-small-trained")
    prompt = model.decode(want["input_ids"][0])
    more = want["greedy_ids"].shape[1] - want["input_ids"].shape[1]
    assert prompt + model.generate(prompt, max_tokens=more, temperature=0) == model.decode(want["greedy_ids"][0])


def test_recurrent_steps_equal_the_parallel_forward_at_every_position():
    model = bdh.load(GOLDEN / "recall-trained")
    ids = model.encode(TEXT.read_text()[:200])
    parallel = model(ids)
    state = model.new_state()
    stepped = np.stack([model.step(state, t) for t in ids])
    assert state.pos == len(ids)
    np.testing.assert_allclose(stepped, parallel, atol=2e-4, rtol=0)
    fresh = model.new_state()
    np.testing.assert_allclose(model.prefill(fresh, ids), parallel[-1], atol=2e-4, rtol=0)
    np.testing.assert_allclose(fresh.rho, state.rho, atol=2e-4, rtol=0)


def test_the_cache_holds_every_site_and_agrees_with_the_command(cli, tmp_path):
    model = bdh.load(GOLDEN / "recall-trained")
    text = "Ann has a red cat. The cat of Ann is red. Bob lives in Paris."
    logits, cache = model.run_with_cache(text)
    c = model.config
    n = c["mlp_internal_dim_multiplier"] * c["n_embd"] // c["n_head"]
    lhtn = (c["n_layer"], c["n_head"], len(text), n)
    assert {k: v.shape for k, v in cache.items()} == {
        "x": lhtn, "y": lhtn, "xy": lhtn, "attn": lhtn[:3] + (c["n_embd"],),
        "out": (c["n_layer"], len(text), c["n_embd"]), "embed": (len(text), c["n_embd"]),
        "rho": (c["n_layer"], c["n_head"], n, c["n_embd"])}
    np.testing.assert_array_equal(logits, model(text))
    # what the decoder read: x ⊙ y here (no gate mechanism), and an edit of it shows
    np.testing.assert_array_equal(cache["xy"], cache["x"] * cache["y"])
    edited = model.run_with_cache(text, sites=["xy"], edits=[bdh.Edit("xy", layer=1, head=0, neuron=9, value=2.0)])
    assert (edited[1]["xy"][1, 0, :, 9] == 2.0).all()
    np.testing.assert_array_equal(edited[1]["xy"][0], cache["xy"][0])
    assert (cache["x"] >= 0).all() and (cache["x"] > 0).any()
    state = model.new_state()
    model.prefill(state, text)
    np.testing.assert_allclose(cache["rho"], state.rho, atol=1e-4, rtol=0)
    # the fraction of x that fires, layer by layer, is `bdh inspect sparsity`'s
    out = tmp_path / "sparsity.json"
    cli("inspect", "sparsity", "--model", GOLDEN / "recall-trained", "--prompt", text, "--json", out)
    import json
    layers = json.loads(out.read_text())["layers"]
    for layer, report in enumerate(layers):
        assert (cache["x"][layer] > 0).mean() == pytest.approx(report["all"]["x"], abs=1e-12)
    only = model.run_with_cache(text, sites=["x"])[1]
    assert list(only) == ["x"]


def test_edits_are_the_command_s_ablation(cli, tmp_path):
    model = bdh.load(GOLDEN / "recall-trained")
    prompt = "Ann has a red cat. The cat of Ann is"
    removed = [(0, 0, 5), (0, 1, 17), (1, 0, 900)]
    out = tmp_path / "ablate.json"
    cli("inspect", "ablate", "--model", GOLDEN / "recall-trained", "--neurons",
        ",".join(f"{l}:{h}:{n}" for l, h, n in removed), "--prompt", prompt, "--tokens", 24, "--rows", 1,
        "--json", out)
    import json
    before, after = json.loads(out.read_text())["generation"]
    edits = [bdh.Edit("x", layer=l, head=h, neuron=n) for l, h, n in removed]
    assert model.generate(prompt, max_tokens=24, temperature=0) == before
    with model.edits(edits):
        assert model.generate(prompt, max_tokens=24, temperature=0) == after
        inside = model(prompt)
        inside_loss = model.loss(prompt[:-1], prompt[1:])
    np.testing.assert_array_equal(inside, model.run_with_edits(prompt, edits))
    assert inside_loss == model.loss(prompt[:-1], prompt[1:], edits) != model.loss(prompt[:-1], prompt[1:])
    assert not np.array_equal(inside, model(prompt)), "the edits are gone after the with block"
    # an edit of ρ runs the recurrent steps, and changes what comes after it
    rho = [bdh.Edit("rho", layer=1, position=20)]
    edited, plain = model.run_with_edits(prompt, rho), model(prompt)
    np.testing.assert_allclose(edited[:20], plain[:20], atol=2e-4, rtol=0)
    assert np.abs(edited[20:] - plain[20:]).max() > 1e-3


def test_generation_equals_the_command_s_for_equal_seeds(cli):
    model = bdh.load(GOLDEN / "ref-small-trained")
    for seed, options in [(7, {}), (3, {"top_k": 5, "repetition_penalty": 1.3}), (11, {"top_p": 0.9, "min_p": 0.05})]:
        flags = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", v)]
        want = cli("generate", "--model", GOLDEN / "ref-small-trained", "--prompt", "ROMEO:", "--no-echo",
                   "--max-tokens", 40, "--seed", seed, *flags)
        assert model.generate("ROMEO:", max_tokens=40, seed=seed, **options) + "\n" == want
    assert model.generate("ROMEO:", max_tokens=40, seed=7) != model.generate("ROMEO:", max_tokens=40, seed=8)
    assert "\n" not in model.generate("ROMEO:", max_tokens=200, temperature=0, stop="\n")


def test_states_pass_between_python_and_the_command(cli, tmp_path):
    model = bdh.load(GOLDEN / "ref-small-trained")
    # the command's saved state, continued in Python
    saved = tmp_path / "cli.state"
    cli("generate", "--model", GOLDEN / "ref-small-trained", "--prompt", "ROMEO:", "--max-tokens", 10,
        "--temperature", 0, "--save-state", saved)
    state = model.load_state(saved)
    assert state.pos == len("ROMEO:") + 10
    want = cli("generate", "--model", GOLDEN / "ref-small-trained", "--load-state", saved, "--prompt", " and",
               "--no-echo", "--max-tokens", 20, "--temperature", 0)
    assert model.generate(" and", max_tokens=20, temperature=0, state=state.fork()) + "\n" == want
    # Python's saved state, continued by the command
    ours = model.new_state()
    model.prefill(ours, "JULIET:\nO Romeo")
    fork = ours.fork()
    ours.save(tmp_path / "py.state")
    want = cli("generate", "--model", GOLDEN / "ref-small-trained", "--load-state", tmp_path / "py.state",
               "--prompt", ",", "--no-echo", "--max-tokens", 20, "--temperature", 0)
    assert model.generate(",", max_tokens=20, temperature=0, state=fork) + "\n" == want
    assert fork.pos == len("JULIET:\nO Romeo,") + 20 and ours.pos == len("JULIET:\nO Romeo")
    np.testing.assert_array_equal(model.load_state(tmp_path / "py.state").rho, ours.rho)
    assert fork.load(tmp_path / "py.state").pos == ours.pos and fork.pos == ours.pos


def test_a_16_bit_state_is_the_command_s(cli, tmp_path):
    model = bdh.load(GOLDEN / "ref-small-trained")
    half = model.new_state(dtype="bf16")
    assert half.dtype == "bf16" and model.new_state().dtype == "f32"
    assert half.nbytes * 2 == model.new_state().nbytes
    text = model.generate("ROMEO:", max_tokens=30, temperature=0, state=half)
    want = cli("generate", "--model", GOLDEN / "ref-small-trained", "--prompt", "ROMEO:", "--no-echo",
               "--max-tokens", 30, "--temperature", 0, "--state-dtype", "bf16")
    assert text + "\n" == want
    half.save(tmp_path / "half.state")
    loaded = model.load_state(tmp_path / "half.state")
    assert loaded.dtype == "bf16"
    np.testing.assert_array_equal(loaded.rho, half.rho)
    wide = model.load_state(tmp_path / "half.state", dtype="f32")  # widened exactly
    assert wide.dtype == "f32"
    np.testing.assert_array_equal(wide.rho, half.rho)
    with pytest.raises(ValueError, match="one of f32"):
        model.new_state(dtype="f8")
    with pytest.raises(ValueError, match="KV cache"):
        bdh.load(GOLDEN / "gpt-tiny").new_state(dtype="f16")


def test_params_are_copies_with_the_reference_s_names():
    model = bdh.load(GOLDEN / "ref-tiny" / "model.safetensors")
    params = model.params()
    assert set(params) == {"embed.weight", "encoder", "encoder_v", "decoder", "lm_head"}
    c = model.config
    assert params["encoder"].shape == (c["n_head"], c["n_embd"],
                                       c["mlp_internal_dim_multiplier"] * c["n_embd"] // c["n_head"])
    before = model([1, 2, 3])
    params["encoder"][:] = 0
    np.testing.assert_array_equal(model([1, 2, 3]), before)
    assert model.decode(model.encode("héllo")) == "héllo"


def test_bad_input_raises_the_right_exception(tmp_path):
    model = bdh.load(GOLDEN / "recall-trained")
    with pytest.raises(FileNotFoundError):
        bdh.load(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError):
        model.load_state(tmp_path / "no.state")
    with pytest.raises(ValueError, match="layer 9"):
        model("abc", edits=[bdh.Edit("x", layer=9)])
    with pytest.raises(ValueError, match="≥ 0"):
        model("abc", edits=[bdh.Edit("x", value=-1.0)])
    with pytest.raises(ValueError, match="vocabulary"):
        model([1, 2, 256])
    with pytest.raises(ValueError, match="integers"):
        model(np.ones(3))
    with pytest.raises(ValueError):
        model.loss("abc", "ab")
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", temperature=-1)
    with pytest.raises(ValueError, match="bogus"):
        model.inspect("sparsity", prompt="abc", bogus=1)
    with pytest.raises(ValueError, match="GPT"):
        bdh.load(GOLDEN / "gpt-tiny" / "model.safetensors").run_with_cache("abc")
    # refused before anything is allocated: the attention scores of 2 M tokens
    with pytest.raises(MemoryError):
        model.run_with_cache(np.zeros(2_000_000, dtype=np.int64), sites=["x"])
    with pytest.raises(FileNotFoundError):
        bdh.load(GOLDEN / "recall-trained", config=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="negative"):
        bdh.Edit("x", layer=-1)
    with pytest.raises(ValueError, match="finite"):
        bdh.Edit("y", value=float("nan"))
    assert bdh.Edit("x", layer=np.int64(1), neuron=np.argsort([3, 1, 2])[0])["neuron"] == 1
    for bad in ([-1, 2], [], ""):
        with pytest.raises(ValueError):
            model(bad)
    with pytest.raises(ValueError, match="vocabulary"):
        model.step(model.new_state(), -3)
    with pytest.raises(ValueError, match="max_tokens"):
        model.generate("a", max_tokens=-1)
    # a state of another model is refused, not run on its own
    other = bdh.load(GOLDEN / "ref-small-trained").new_state()
    for use in (lambda: model.step(other, 3), lambda: model.prefill(other, "a"),
                lambda: model.generate("a", state=other)):
        with pytest.raises(ValueError, match="another model"):
            use()
    with pytest.raises(IsADirectoryError):
        model.new_state().save(tmp_path)
    # the edits of a with block are checked on entry
    with pytest.raises(ValueError, match="layer 9"):
        with model.edits([bdh.Edit("x", layer=9)]):
            pass
    with pytest.raises(ValueError, match="no sites"):
        model.run_with_cache("abc", sites=[])
    assert list(model.run_with_cache("abc", sites="xy")[1]) == ["xy"]
    with pytest.raises(ValueError, match="set_threads"):
        model.sparsity(prompt="abc", threads=1)


def test_activation_patches_carry_another_run_s_values():
    model = bdh.load(GOLDEN / "recall-trained")
    clean, corrupted = "ada lives in oslo. where does ada live?", "ada lives in rome. where does ada live?"
    clean_logits, clean_cache = model.run_with_cache(clean)
    plain = model(corrupted)
    # the last layer's output patched in whole: lm_head reads it, so the logits are the clean run's
    last = model.config["n_layer"] - 1
    whole = bdh.Patch("out", last, clean_cache["out"][last])
    np.testing.assert_allclose(model(corrupted, edits=[whole]), clean_logits, atol=1e-5, rtol=0)
    # at positions 0..16 only: those are the clean run's, the rest the corrupted run's
    part = bdh.Patch("out", last, clean_cache["out"][last], positions=(0, 16))
    patched = model(corrupted, edits=[part])
    np.testing.assert_allclose(patched[:16], clean_logits[:16], atol=1e-5, rtol=0)
    np.testing.assert_allclose(patched[16:], plain[16:], atol=1e-5, rtol=0)
    # x of layer 0, head 1, three neurons: the cache shows exactly those values moved
    x = bdh.Patch("x", 0, clean_cache["x"][0], head=1, neurons=[3, 5, 700])
    _, cache = model.run_with_cache(corrupted, sites=["x"], edits=[x])
    _, before = model.run_with_cache(corrupted, sites=["x"])
    np.testing.assert_array_equal(cache["x"][0, 1, :, [3, 5, 700]], clean_cache["x"][0, 1, :, [3, 5, 700]])
    np.testing.assert_array_equal(cache["x"][0, 0], before["x"][0, 0])
    with model.edits([x]):
        assert model.loss(corrupted[:-1], corrupted[1:]) == model.loss(corrupted[:-1], corrupted[1:], [x])
        with pytest.raises(ValueError, match="patches"):
            model.generate("ada")
    with pytest.raises(ValueError, match="non-empty part"):
        bdh.Patch("out", last, clean_cache["out"][last], positions=(0, 100))
    with pytest.raises(ValueError):
        bdh.Patch("rho", 0, clean_cache["rho"][0])
    # values of the wrong shape, sign or place are refused, not mapped
    with pytest.raises(ValueError, match=r"\(H, T, N\)"):
        model(corrupted, edits=[bdh.Patch("x", 0, clean_cache["x"][0].transpose(1, 0, 2))])
    with pytest.raises(ValueError, match="≥ 0"):
        bdh.Patch("y", 0, -clean_cache["y"][0])
    with pytest.raises(ValueError, match="no heads"):
        bdh.Patch("out", 0, clean_cache["out"][0], head=1)
    with pytest.raises(ValueError, match="past the run"):
        model("ada", edits=[bdh.Patch("out", 0, clean_cache["out"][0], positions=(10, 18))])
