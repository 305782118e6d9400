"""bench/best_epoch_so_far.py: the train stage's best.pt is what gets scored, beside the base model."""

import json

import torch

from bench.best_epoch_so_far import main
from tests.unit.stages.test_evaluate import QUERIES, write_beir


def _result(out: str) -> dict:
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


def test_scores_the_saved_weights_beside_the_base_model(tmp_path, capsys):
    from eft.models import load_sentence_model

    write_beir(tmp_path / "beir", QUERIES)
    work = tmp_path / "ws" / ".work" / "train"
    assert main([str(tmp_path / "ws"), str(tmp_path / "beir")]) == 2  # nothing validated yet: said, not a traceback
    assert "has not validated an epoch" in capsys.readouterr().err
    work.mkdir(parents=True)
    state = load_sentence_model(device="cpu").state_dict()
    torch.save(state, work / "best.pt")
    assert main([str(tmp_path / "ws"), str(tmp_path / "beir")]) == 0
    same = _result(capsys.readouterr().out)
    assert same["base"] == same["best epoch so far"]  # the base weights saved as best score as the base
    # scrambled token embeddings (as in test_evaluate): the saved weights, not the base model, are what is scored
    emb = "0.model.embeddings.word_embeddings.weight"
    state[emb] = state[emb][torch.randperm(state[emb].shape[0], generator=torch.Generator().manual_seed(0))]
    torch.save(state, work / "best.pt")
    assert main([str(tmp_path / "ws"), str(tmp_path / "beir")]) == 0
    worse = _result(capsys.readouterr().out)
    assert worse["best epoch so far"]["ndcg@10"] < worse["base"]["ndcg@10"]
