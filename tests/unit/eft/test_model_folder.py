"""The shipped model folder is in the classic sentence-transformers layout and loads in the readers users have.

Readers checked here: the installed sentence-transformers, and plain `transformers` with the pooling read
from 1_Pooling/config.json the way text-embeddings-inference reads it. Infinity (sentence-transformers 3)
is checked by bench/serve.py, which serves the tuned folder with it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from eft.model_folder import (
    LayoutError,
    layout_problems,
    pooling_of,
    write_classic_layout,
)
from eft.models import load_sentence_model
from eft.spec import BaseModelSpec

TEXTS = ["how many pods does a Deployment run", "A StatefulSet gives each pod a stable network identity.",
         "query: Le nœud redémarre 🚀"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The bundled model saved by the installed sentence-transformers, with prompts and a non-default length."""
    model = load_sentence_model(BaseModelSpec(max_seq_length=200), device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    folder = tmp_path_factory.mktemp("model") / "model"
    model.save(str(folder), create_model_card=False)
    return model, folder


@pytest.fixture(scope="module")
def classic(saved, tmp_path_factory):
    model, folder = saved
    out = tmp_path_factory.mktemp("classic") / "model"
    shutil.copytree(folder, out)
    write_classic_layout(out, int(model.max_seq_length))
    return out


def test_files_follow_the_classic_layout(classic):
    assert layout_problems(classic) == []
    modules = json.loads((classic / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                            "sentence_transformers.models.Pooling",
                                            "sentence_transformers.models.Normalize"]
    assert json.loads((classic / "sentence_bert_config.json").read_text()) == {"max_seq_length": 200,
                                                                               "do_lower_case": False}
    pool = json.loads((classic / "1_Pooling" / "config.json").read_text())
    assert pool["word_embedding_dimension"] == 384 and pool["pooling_mode_mean_tokens"] is True
    assert not any(v for k, v in pool.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    st_cfg = json.loads((classic / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"] == {"query": "query: ", "document": "passage: "}
    assert pooling_of(classic) == ["mean"]


def test_the_newer_layout_is_reported(saved):
    _, folder = saved
    problems = layout_problems(folder)
    assert any("not a classic module class" in p for p in problems)
    assert "sentence_bert_config.json has no max_seq_length" in problems


def test_rewrite_is_idempotent(classic):
    before = {p.name: p.read_bytes() for p in classic.rglob("*.json")}
    write_classic_layout(classic, 200)
    assert {p.name: p.read_bytes() for p in classic.rglob("*.json")} == before


def test_unknown_module_is_refused_not_guessed(saved, tmp_path):
    _, folder = saved
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    modules = json.loads((copy / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.base.modules.Dense"})
    (copy / "modules.json").write_text(json.dumps(modules))
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(LayoutError, match="no classic"):
        write_classic_layout(copy, 200)
    # Refused before anything was written: no folder half in one layout, half in the other.
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_installed_sentence_transformers_loads_it(saved, classic):
    from sentence_transformers import SentenceTransformer

    model, _ = saved
    want = model.encode(TEXTS, normalize_embeddings=True)
    st = SentenceTransformer(str(classic), device="cpu")
    assert st.max_seq_length == 200
    assert st.prompts["query"] == "query: "
    np.testing.assert_allclose(st.encode(TEXTS), want, atol=1e-6)


def test_plain_transformers_with_the_pooling_config(saved, classic):
    """What text-embeddings-inference and hand-written loaders do: AutoModel, then the pooling config's mode."""
    from transformers import AutoModel, AutoTokenizer

    model, _ = saved
    want = model.encode(TEXTS, normalize_embeddings=True)
    tok = AutoTokenizer.from_pretrained(str(classic))
    enc = AutoModel.from_pretrained(str(classic)).eval()
    cfg = json.loads((classic / "sentence_bert_config.json").read_text())
    assert pooling_of(classic) == ["mean"]
    batch = tok(TEXTS, padding=True, truncation=True, max_length=cfg["max_seq_length"], return_tensors="pt")
    with torch.inference_mode():
        hidden = enc(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    got = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
