"""training.compile: when the train stage compiles, that a compiled step computes what an eager one does, and
that a model the compiler cannot handle still trains (eagerly, with the reason in the manifest)."""

from __future__ import annotations

import csv

import pytest
import torch
from eft.stages.train.compiled_forward import COMPILE_MIN_ROWS, TrainForward, decide_compile

from eft.pipeline import StageFailed, execute_stage
from tests.unit.stages.test_train import make_spec, write_prepare


def losses(ws) -> list[float]:
    with open(ws.stage_dir("train") / "training_curve.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def test_decide_compile():
    assert decide_compile("never", "cuda:0", 10**9) == (False, "training.compile is 'never'")
    assert decide_compile("always", "cpu", 1)[0] is True
    on, why = decide_compile("auto", "cpu", 10**9)
    assert not on and "not on a GPU" in why
    on, why = decide_compile("auto", "cuda:0", COMPILE_MIN_ROWS - 1)
    assert not on and f"{COMPILE_MIN_ROWS - 1:,} training rows" in why
    assert decide_compile("auto", "cuda", COMPILE_MIN_ROWS)[0] is True


def test_spec_rejects_an_unknown_compile_setting():
    from eft.spec import SpecError

    with pytest.raises(SpecError, match="compile"):
        make_spec(compile="sometimes")


def test_compiled_forward_matches_eager_values_and_gradients():
    """A one-layer copy of the bundled model (compiles in seconds on a CPU), dropout off so that both paths
    draw no random numbers: same embeddings, same gradients."""
    from eft.models import load_sentence_model

    model = load_sentence_model(device="cpu").eval()
    enc = model[0].auto_model.encoder
    enc.layer = enc.layer[:1]
    texts = ["what is the zorblat of unit 1?", "The glimmeric of unit 1 is 47, measured twice."]
    feats = model.preprocess(texts)

    def run(fwd):
        model.zero_grad(set_to_none=True)
        emb = fwd(feats)["sentence_embedding"]
        (emb * torch.linspace(-1, 1, emb.shape[1])).sum().backward()
        return emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_emb, eager_grads = run(model)
    tf = TrainForward(model, True, "test")
    comp_emb, comp_grads = run(tf.forward)
    assert tf.active and comp_emb.shape == (2, 384)
    torch.testing.assert_close(comp_emb, eager_emb, atol=1e-5, rtol=1e-4)
    assert comp_grads.keys() == eager_grads.keys() and len(comp_grads) > 10
    for n in eager_grads:
        torch.testing.assert_close(comp_grads[n], eager_grads[n], atol=1e-5, rtol=1e-3, msg=n)
    # The compiled handle shares the weights: the model saves as before (no wrapper prefixes).
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())


def test_compile_always_trains_through_the_compiler(tmp_path):
    ws = write_prepare(tmp_path / "ws")
    m = execute_stage(make_spec(epochs=1, compile="always"), ws, "train")
    c = m["details"]["compile"]
    assert c["enabled"] is True and c["setting"] == "always" and "failed" not in c, c
    assert c["firstStepSeconds"] > 0
    got = losses(ws)
    assert len(got) == m["counts"]["steps"] >= 5
    k = 2
    assert sum(got[-k:]) / k < sum(got[:k]) / k, got


def test_a_model_that_fails_to_compile_trains_eagerly(tmp_path, monkeypatch):
    def broken_compile(model, **kw):
        def call(*a, **k):
            raise RuntimeError("backend exploded\nsecond line of the compiler's story")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    ws = write_prepare(tmp_path / "ws")
    m = execute_stage(make_spec(epochs=1, compile="always"), ws, "train")
    c = m["details"]["compile"]
    assert c["enabled"] is False and c["failed"] == "RuntimeError: backend exploded", c
    assert len(losses(ws)) == m["counts"]["steps"] > 0


def test_out_of_memory_inside_the_compiled_step_is_not_taken_for_a_compile_failure(tmp_path, monkeypatch):
    def oom_compile(model, **kw):
        def call(*a, **k):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return call

    monkeypatch.setattr(torch, "compile", oom_compile)
    ws = write_prepare(tmp_path / "ws")
    with pytest.raises(StageFailed, match="out of GPU memory"):
        execute_stage(make_spec(epochs=1, compile="always"), ws, "train")
