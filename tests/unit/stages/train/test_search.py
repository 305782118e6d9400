"""training.search: the candidates, the trials on the stage's tiny synthetic task, the choice, the journal that
survives a kill, and what the manifest and the summary record."""

from __future__ import annotations

import json

import pytest

from eft.pipeline import StageFailed, execute_stage
from eft.settings import StageSettings
from eft.stages.train import search as search_module
from eft.stages.train.search import Trial, best_trial, candidates, trial_steps
from tests.unit.stages.test_train import make_spec, write_prepare


def test_candidates_start_with_the_specs_own_settings_and_never_repeat():
    assert candidates(1e-5, 0.02, 3) == [(1e-5, 0.02), (5e-5, 0.05), (1e-5, 0.05)]
    # the 'measured' preset's own pair: the duplicates fall out, the recipe's pair comes second
    assert candidates(5e-5, 0.05, 6) == [(5e-5, 0.05), (1e-5, 0.02), (2e-5, 0.05), (1e-4, 0.05)]
    assert candidates(1e-5, 0.02, 1) == [(1e-5, 0.02)]


def test_trial_steps_are_a_share_of_the_run_with_a_floor():
    assert trial_steps(1000, 0.25) == 250
    assert trial_steps(30, 0.1) == 10
    assert trial_steps(6, 0.5) == 6


def test_the_best_trial_wins_and_ties_keep_the_earlier():
    a, b, c = Trial(1e-5, 0.02, 5, 0.5, 1), Trial(5e-5, 0.05, 5, 0.7, 1), Trial(1e-5, 0.05, 5, 0.7, 1)
    assert best_trial([a, b, c]) is b
    assert best_trial([Trial(1e-5, 0.02, 5, None, 1)]).learning_rate == 1e-5


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    ws = write_prepare(tmp_path_factory.mktemp("ws-search"))
    efr = make_spec(epochs=1, learningRate=1e-6, temperature=0.5, search={"trials": 3, "trialFraction": 0.5})
    progress: list[str] = []
    m = execute_stage(efr, ws, "train", progress=progress.append, settings=StageSettings(device="cpu"))
    return ws, m, progress


def test_the_search_runs_its_trials_and_trains_with_the_best(searched):
    ws, m, progress = searched
    s = m["details"]["search"]
    assert [(t["learningRate"], t["temperature"]) for t in s["trials"]] == [(1e-6, 0.5), (5e-5, 0.05), (1e-5, 0.02)]
    assert all(t["steps"] >= 1 and t["valNdcg10"] is not None for t in s["trials"])
    best = max(s["trials"], key=lambda t: t["valNdcg10"])
    assert s["chosen"] == {"learningRate": best["learningRate"], "temperature": best["temperature"]}
    # the spec's own lr 1e-6 barely moves the model: a real choice was made
    assert s["chosen"] != {"learningRate": 1e-6, "temperature": 0.5}
    d = m["details"]
    assert (d["learningRate"], d["temperature"]) == (best["learningRate"], best["temperature"])
    assert m["counts"]["search_trials"] == 3
    summary = json.loads(m["summary"])
    assert summary["search"] == [[t["learningRate"], t["temperature"], t["valNdcg10"]] for t in s["trials"]]
    assert sum("search: trial" in p for p in progress) == 3
    assert (ws.stage_dir("train") / "model" / "modules.json").is_file()


def test_a_rerun_after_a_kill_repeats_no_finished_trial(tmp_path, monkeypatch):
    from eft.stages.train.trainer import Trainer

    ws = write_prepare(tmp_path / "ws")
    efr = make_spec(epochs=1, search={"trials": 2, "trialFraction": 0.5})
    fit, calls = Trainer.fit, []

    def killed_in_the_second_trial(self, scope):
        calls.append(self.step_limit)
        if len(calls) == 2:
            raise StageFailed("train", "killed")
        return fit(self, scope)

    monkeypatch.setattr(Trainer, "fit", killed_in_the_second_trial)
    with pytest.raises(StageFailed, match="killed"):
        execute_stage(efr, ws, "train", settings=StageSettings(device="cpu"))
    journal = json.loads((ws.root / ".work" / "train" / "search.json").read_text())
    assert len(journal["trials"]) == 1
    monkeypatch.undo()
    progress: list[str] = []
    m = execute_stage(efr, ws, "train", progress=progress.append, settings=StageSettings(device="cpu"))
    assert not any("search: trial 1/" in p for p in progress) and sum("search: trial 2/" in p for p in progress) == 1
    assert len(m["details"]["search"]["trials"]) == 2


def test_a_search_without_a_validation_split_fails_clearly(tmp_path):
    ws = write_prepare(tmp_path / "ws")
    (ws.root / "prepare" / "beir" / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(StageFailed, match="validation split, which is empty"):
        execute_stage(make_spec(epochs=1, search={"trials": 2}), ws, "train", settings=StageSettings(device="cpu"))


def test_the_default_searches_on_one_gpu_only():
    assert search_module.default_trials("cuda", 1) == search_module.GPU_DEFAULT_TRIALS > 1
    assert search_module.default_trials("cuda:0", 1) == search_module.GPU_DEFAULT_TRIALS
    assert search_module.default_trials("cpu", 1) == 1
    assert search_module.default_trials("cuda", 2) == 1  # torchrun: the search runs in one process


def test_a_cpu_run_with_the_search_unset_trains_once(tmp_path):
    ws = write_prepare(tmp_path / "ws")
    efr = make_spec(epochs=1)
    assert efr.spec.training.search.trials is None
    progress: list[str] = []
    m = execute_stage(efr, ws, "train", progress=progress.append, settings=StageSettings(device="cpu"))
    assert "search" not in m["details"] and not any(p.startswith("search:") for p in progress)


def test_the_default_search_skips_an_empty_validation_split_where_a_set_one_fails(tmp_path, monkeypatch):
    # as on one GPU: the default asks for trials
    monkeypatch.setattr(search_module, "default_trials", lambda device, world: 3)
    ws = write_prepare(tmp_path / "ws")
    (ws.root / "prepare" / "beir" / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    progress: list[str] = []
    m = execute_stage(make_spec(epochs=1), ws, "train", progress=progress.append,
                      settings=StageSettings(device="cpu"))
    assert "search" not in m["details"]
    assert any("search: skipped" in p and "validation split is empty" in p for p in progress)
