"""The spec model: defaults, every kind of validation error with its path, manifest and bare-spec loading."""

import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from eft.fingerprint import section_hash
from eft.spec import EmbeddingFinetuneSpec, SpecError, load_spec, parse_document


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_are_the_measured_preset_and_the_recipe_is_one_word_away():
    s = EmbeddingFinetuneSpec()
    assert s.base_model.name == "bundled"
    assert s.mining.negatives == 4 and s.mining.margin == 0.95 and s.mining.candidates == 50
    tr = s.training
    assert tr.preset == "measured"
    assert (tr.learning_rate, tr.temperature, tr.epochs, tr.max_rows_per_question) == (5e-5, 0.05, 2, 8)
    assert s.training_negatives("cpu") == 0 and s.training_negatives("cuda:0") == 4
    recipe = EmbeddingFinetuneSpec.model_validate({"training": {"preset": "recipe"}})
    tr = recipe.training
    assert (tr.learning_rate, tr.temperature, tr.epochs, tr.max_rows_per_question) == (1e-5, 0.02, 3, None)
    assert recipe.training_negatives("cpu") == 4 and recipe.training_negatives("cuda") == 4
    # a field the spec sets wins over the preset, and stays the user's in a dump
    mixed = EmbeddingFinetuneSpec.model_validate({"training": {"preset": "recipe", "temperature": 0.05,
                                                               "negatives": 1}})
    assert (mixed.training.temperature, mixed.training.learning_rate) == (0.05, 1e-5)
    assert mixed.training_negatives("cpu") == 1
    assert mixed.model_dump(by_alias=True, exclude_unset=True)["training"] == {
        "preset": "recipe", "temperature": 0.05, "negatives": 1}
    assert s.training.batch_size == "auto"
    assert s.evaluation.k == [1, 5, 10, 100] and s.evaluation.gate.metric == "ndcg@10"
    assert s.export.onnx.opset == 17 and s.export.onnx.int8 is True
    assert s.split.validation == 0.05 and s.split.test is None and s.split.seed == 42
    assert s.test_fraction == 0.1  # no evaluation.datasets: the gate reads the synthetic test split
    assert s.sdg.questions_per_chunk == 3 and s.sdg.max_hops == 3 and s.sdg.min_quality_score == 7


def test_training_length_is_the_full_length_unless_the_spec_cuts_it():
    """Training texts: baseModel.maxSeqLength by default (every preset), the spec's own length when set, never
    above the full length."""
    assert EmbeddingFinetuneSpec().training_seq_length() == 256
    for preset in ("measured", "recipe"):
        assert EmbeddingFinetuneSpec.model_validate({"training": {"preset": preset}}).training_seq_length() == 256
    short = EmbeddingFinetuneSpec.model_validate({"baseModel": {"maxSeqLength": 64}})
    assert short.training_seq_length() == 64
    own = EmbeddingFinetuneSpec.model_validate({"training": {"maxSeqLength": 128}})
    assert own.training_seq_length() == 128 and own.base_model.max_seq_length == 256
    with pytest.raises(ValidationError, match="training.maxSeqLength must not exceed baseModel.maxSeqLength"):
        EmbeddingFinetuneSpec.model_validate({"training": {"maxSeqLength": 512}})


def test_whole_manifest_and_bare_spec_load_the_same(tmp_path):
    whole = write(tmp_path, """
        apiVersion: eft.ai/v1alpha1
        kind: EmbeddingFinetune
        metadata: {name: hw-docs}
        spec:
          training: {epochs: 1, batchSize: 8}
          mining: {negatives: 2}
    """, "whole.yaml")
    bare = write(tmp_path, """
        training: {epochs: 1, batchSize: 8}
        mining: {negatives: 2}
    """, "bare.yaml")
    a, b = load_spec(whole), load_spec(bare)
    assert a.name == "hw-docs" and b.name == "eft"
    assert a.spec == b.spec
    assert a.spec.training.batch_size == 8 and a.spec.mining.negatives == 2


def test_relative_corpus_path_resolves_against_the_spec_file(tmp_path):
    (tmp_path / "docs").mkdir()
    s = load_spec(write(tmp_path, "corpus: {path: ./docs}\n"))
    assert s.spec.corpus.path == str((tmp_path / "docs").resolve())
    url = load_spec(write(tmp_path, "corpus: {path: 's3://bucket/docs'}\n", "u.yaml"))
    assert url.spec.corpus.path == "s3://bucket/docs"


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"trainig": {}}, "spec.trainig: unknown field"),
        ({"training": {"epochz": 3}}, "spec.training.epochz: unknown field"),
        ({"training": {"batchSize": 1}}, "spec.training.batchSize: batchSize must be 'auto' or an integer >= 2"),
        ({"training": {"batchSize": "big"}}, "spec.training.batchSize"),
        ({"sdg": {"backend": "gpt"}}, "spec.sdg.backend: must be one of 'openai' or 'offline' (got 'gpt')"),
        ({"sdg": {"backend": "openai"}}, "spec.sdg: backend 'openai' needs the sdg.openai block"),
        ({"mining": {"margin": 1.5}}, "spec.mining.margin: Input should be less than or equal to 1"),
        ({"mining": {"negatives": 10, "candidates": 5}}, "candidates (5) must be >= negatives (10)"),
        ({"corpus": {"chunking": {"maxTokens": 64, "overlapTokens": 64}}}, "overlapTokens (64) must be smaller"),
        ({"split": {"validation": 0.5, "test": 0.5}}, "leaves too little for training"),
        ({"split": {"by": "row"}}, "spec.split.by: must be one of 'document', 'chunk' or 'question' (got 'row')"),
        ({"split": {"test": 0}}, "split.test 0 leaves no synthetic test split: the gate must be judged on an "
                                 "evaluation.datasets entry"),
        ({"split": {"test": 0}, "evaluation": {"gate": {"dataset": "test"}, "datasets": [{"name": "h", "path": "h"}]}},
         "split.test 0 leaves no synthetic test split"),
        ({"split": {"validation": 0.85}}, "validation + test = 0.95 leaves too little for training"),
        ({"evaluation": {"gate": {"dataset": "human"}, "datasets": [{"name": "nf", "path": "/d"}]}},
         "spec.evaluation: gate.dataset must be 'test' or the name of an evaluation.datasets entry (got 'human', "
         "have ['test', 'nf'])"),
        ({"evaluation": {"datasets": [{"name": "gate", "path": "/d"}]}},
         "spec.evaluation.datasets[0]: the names 'test', 'gate', 'datasets', 'seenInTraining', 'trainingSearch' and 'quotesRemoved' are reserved"),
        ({"evaluation": {"gate": {"metric": "ndcg@20"}}}, "gate metric ndcg@20 uses k=20, which is not in k"),
        ({"evaluation": {"gate": {"metric": "mrr@10"}}}, "spec.evaluation.gate.metric: String should match"),
        ({"evaluation": {"k": [0]}}, "spec.evaluation.k: every k must be between 1 and 1000"),
        ({"workspace": {"accessModes": ["ReadWriteSometimes"]}}, "spec.workspace.accessModes[0]: must be one of"),
        ({"sdg": {"backend": "openai", "openai": {"baseURL": "llm:8000"}}}, "spec.sdg.openai.baseURL: String should match"),
    ],
)
def test_each_error_names_its_field_path(doc, expected):
    with pytest.raises(SpecError) as ei:
        parse_document(doc)
    assert any(expected in p for p in ei.value.problems), ei.value.problems


def test_all_errors_are_reported_together():
    with pytest.raises(SpecError) as ei:
        parse_document({"spec": {"training": {"epochs": 0}, "mining": {"negatives": -1}, "bogus": 1}})
    paths = [p.split(":")[0] for p in ei.value.problems]
    assert paths == ["spec.training.epochs", "spec.mining.negatives", "spec.bogus"] or sorted(paths) == sorted(
        ["spec.training.epochs", "spec.mining.negatives", "spec.bogus"])


def test_manifest_level_errors():
    with pytest.raises(SpecError) as ei:
        parse_document({"apiVersion": "other.io/v1", "kind": "EmbeddingFinetune", "metadata": {"name": "Bad_Name"}})
    text = "\n".join(ei.value.problems)
    assert "apiVersion: Value error" in text or "apiVersion: apiVersion must be eft.ai/v1alpha1" in text
    assert "metadata.name" in text


def test_file_problems_are_clear(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(write(tmp_path, "training: {epochs: [\n"))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(write(tmp_path, "- a\n- b\n", "list.yaml"))
    with pytest.raises(SpecError, match="expected one YAML document"):
        load_spec(write(tmp_path, "a: 1\n---\nb: 2\n", "two.yaml"))


def test_section_hash_tracks_only_named_sections():
    a = EmbeddingFinetuneSpec()
    b = EmbeddingFinetuneSpec.model_validate({"training": {"epochs": 5}})
    assert section_hash(a, ("mining",)) == section_hash(b, ("mining",))
    assert section_hash(a, ("training",)) != section_hash(b, ("training",))
    assert section_hash(a, ("training.epochs",)) != section_hash(b, ("training.epochs",))


def test_rotating_a_secret_reference_makes_no_stage_out_of_date():
    a = EmbeddingFinetuneSpec.model_validate({"baseModel": {"hfTokenSecret": {"name": "hf", "key": "token"}},
                                              "sdg": {"backend": "openai", "openai": {"apiKeySecret": {"name": "k1", "key": "k"}}}})
    b = EmbeddingFinetuneSpec.model_validate({"baseModel": {"hfTokenSecret": {"name": "hf2", "key": "t2"}},
                                              "sdg": {"backend": "openai",
                                                      "openai": {"apiKeySecret": {"name": "k2", "key": "k"}}}})
    c = EmbeddingFinetuneSpec.model_validate({"baseModel": {"hfTokenSecret": {"name": "hf", "key": "token"},
                                                            "maxSeqLength": 64},
                                              "sdg": {"backend": "openai", "openai": {"apiKeySecret": {"name": "k1", "key": "k"}}}})
    assert section_hash(a, ("base_model", "sdg")) == section_hash(b, ("base_model", "sdg"))
    assert section_hash(a, ("base_model",)) != section_hash(c, ("base_model",))  # real settings still count


def test_cli_validate_exit_codes(tmp_path):
    good = write(tmp_path, "training: {epochs: 1}\n", "good.yaml")
    bad = write(tmp_path, "training: {epochs: 0, lr: 3}\n", "bad.yaml")
    ok = subprocess.run([sys.executable, "-m", "eft.cli", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run([sys.executable, "-m", "eft.cli", "validate", str(bad)], capture_output=True, text=True)
    assert no.returncode == 1
    assert "spec.training.epochs" in no.stderr and "spec.training.lr: unknown field" in no.stderr
    assert "Traceback" not in no.stderr


def test_reference_doc_is_current():
    from eft.reference import main, rows
    from eft.spec import EmbeddingFinetuneSpec

    paths = [r[0] for r in rows(EmbeddingFinetuneSpec)]
    assert "spec.sdg.openai.baseURL" in paths and "spec.training.batchSize" in paths
    assert main(["--check"]) == 0, "docs/reference.md is stale: python -m eft.reference --write"


@pytest.mark.parametrize("patch,field", [
    ({"evaluation": {"k": list(range(1, 66))}}, "spec.evaluation.k"),
    ({"evaluation": {"gate": {"metric": "ndcg@" + "1" * 40}}}, "spec.evaluation.gate.metric"),
    ({"workspace": {"accessModes": ["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadWriteOnce"]}},
     "spec.workspace.accessModes"),
])
def test_bounds_the_crd_needs_are_the_models_too(patch, field):
    """`eft validate` refuses what the API server refuses: the size bounds come from the model's fields."""
    with pytest.raises(SpecError) as ei:
        parse_document({"spec": patch})
    assert any(p.startswith(field) for p in ei.value.problems), ei.value.problems


@pytest.mark.parametrize("split, evaluation, expected", [
    ({}, {}, 0.1),  # the gate reads the synthetic test split
    ({}, {"datasets": [{"name": "h", "path": "h"}]}, 0.0),  # the gate reads the human-labelled set
    ({}, {"datasets": [{"name": "h", "path": "h"}], "gate": {"dataset": "test"}}, 0.1),
    ({"test": 0.2}, {"datasets": [{"name": "h", "path": "h"}]}, 0.2),  # set: used as written
    ({"test": 0}, {"datasets": [{"name": "h", "path": "h"}]}, 0.0),
])
def test_an_unset_test_fraction_holds_no_questions_back_when_the_gate_reads_a_human_labelled_set(
        split, evaluation, expected):
    spec = parse_document({"spec": {"split": split, "evaluation": evaluation}}).spec
    assert spec.test_fraction == expected
