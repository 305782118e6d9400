"""eft.onnx_export on the bundled MiniLM (max length 32): the exported graph, its parity with PyTorch in ONNX
Runtime, the int8 and fp16 variants, and the errors for what cannot be exported.

One fp32 export serves the module; TensorRT (build_tensorrt, run_tensorrt) needs a CUDA GPU and is not here.
"""

from __future__ import annotations

import logging
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from eft import onnx_export as ox
from eft.models import load_sentence_model, resolve_model_path
from eft.spec import BaseModelSpec

MAX_LEN = 32
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
TEXTS = ["what is a pod?", "how many replicas does a Deployment run by default",
         "The number of old ReplicaSets to retain to allow rollback. " * 8,  # longer than MAX_LEN: truncated
         "kubectl"]


@pytest.fixture(scope="module")
def st():
    model = load_sentence_model(BaseModelSpec(max_seq_length=MAX_LEN), path=resolve_model_path("bundled"),
                                device="cpu")
    return model.eval()


@pytest.fixture(scope="module")
def exported(st, tmp_path_factory) -> tuple[Path, dict]:
    """model.onnx, exported over a folder holding a stale external-data file of an earlier export."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    (path.parent / "model.onnx.data").write_bytes(b"stale")
    return path, ox.export_onnx(st, path, opset=17, exporter="torchscript")


@pytest.fixture(scope="module")
def fp32(exported) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])


def feeds(st, texts: list[str]) -> dict[str, np.ndarray]:
    enc = st.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in INPUTS}


def embed(session: ort.InferenceSession, st, texts: list[str]) -> np.ndarray:
    return session.run([ox.OUTPUT_NAME], feeds(st, texts))[0]


def pytorch(st, texts: list[str]) -> np.ndarray:
    return st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# ------------------------------------------------------------------------------------ facts


def test_model_facts_of_the_bundled_minilm(st):
    assert ox.model_facts(st) == {
        "pooling": "mean", "dimension": 384, "max_seq_length": MAX_LEN, "inputs": INPUTS,
        "modules": ["Transformer", "Pooling", "Normalize"], "normalize_module": True, "pad_token_id": 0,
        "architecture": "BertModel", "model_type": "bert",
    }


@pytest.mark.parametrize("modules, first", [([], "missing"), ([torch.nn.Linear(2, 2)], "Linear")])
def test_model_facts_refuses_a_model_that_does_not_start_with_an_encoder(modules, first):
    with pytest.raises(ox.ExportError, match=f"the first module is {first}, expected a sentence-transformers"):
        ox.model_facts(modules)


# ------------------------------------------------------------------------------------ the fp32 graph


def test_export_says_which_exporter_and_opset_wrote_the_graph(exported):
    path, info = exported
    assert info == {"exporter": "torchscript", "opset": 17, "inputs": INPUTS}
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    # the stale file of the earlier export is gone and the graph needs no external data
    assert not (path.parent / "model.onnx.data").exists()
    assert ox.onnx_files(path) == [path]


def test_graph_inputs_and_output_have_dynamic_batch_and_sequence(exported):
    graph = onnx.load(str(exported[0])).graph
    assert [i.name for i in graph.input] == INPUTS
    for i in graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims(i) == ["batch", "sequence"], i.name
    [out] = graph.output
    assert out.name == ox.OUTPUT_NAME == "sentence_embedding"
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(dims(out)) == 2 and dims(out)[0] == "batch"  # (the exporter names the 384 symbolically)


def test_graph_reproduces_pytorch_batched_and_alone(st, fp32):
    # Batches of other sizes and lengths than the traced one, padded and not, up to the maximum length.
    ref = pytorch(st, TEXTS)
    batched = embed(fp32, st, TEXTS)
    alone = np.concatenate([embed(fp32, st, [t]) for t in TEXTS])
    assert feeds(st, TEXTS)["input_ids"].shape == (len(TEXTS), MAX_LEN)
    for got in (batched, alone):
        assert got.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert ox.cosine_rows(ref, got).min() >= 0.9999


def test_export_restores_the_models_attention_implementation(st, exported):
    config = st[0].auto_model.config
    before = config._attn_implementation
    assert before != "eager"  # sentence-transformers loads sdpa: the export switches it and switches it back
    with ox._eager_attention(st):
        assert config._attn_implementation == "eager"
    assert config._attn_implementation == before


def test_unknown_exporter_is_refused(st, tmp_path):
    with pytest.raises(ox.ExportError, match=r"ONNX export failed \(bogus: unknown exporter 'bogus'\)"):
        ox.export_onnx(st, tmp_path / "model.onnx", exporter="bogus")
    assert not (tmp_path / "model.onnx").exists()


def test_every_failed_exporter_is_named(st, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the dynamo exporter's package, as if not installed
    with pytest.raises(ox.ExportError) as err:
        ox.export_onnx(st, tmp_path / "model.onnx", opset=99)
    assert str(err.value) == ("ONNX export failed (torchscript: RuntimeError: Unsupported onnx_opset_version: 99; "
                              "dynamo: needs the onnxscript package)")
    assert not (tmp_path / "model.onnx").exists()


def test_onnx_files_lists_external_data(tmp_path):
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="g.weights",
              size_threshold=0)
    assert ox.onnx_files(path) == [path, tmp_path / "g.weights"]


# ------------------------------------------------------------------------------------ variants


def ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_int8_is_fused_quantized_and_close_to_fp32(st, exported, fp32):
    src = exported[0]
    dst = src.parent / "model.int8.onnx"
    info = ox.quantize_int8(src, dst, st[0].auto_model.config)
    assert info["method"].startswith("onnxruntime quantize_dynamic int8")
    assert info["fused"]["Attention"] == 6 and info["fused"]["SkipLayerNormalization"] == 12  # 6 layers
    assert ops(dst)["QAttention"] == 6 and ops(dst)["MatMulInteger"] > 0 and ops(dst)["MatMul"] == 0
    assert not list(src.parent.glob("*.tmp.onnx*"))  # the fused intermediate graph is removed
    assert dst.stat().st_size < 0.7 * src.stat().st_size
    int8 = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    cos = ox.cosine_rows(embed(fp32, st, TEXTS), embed(int8, st, TEXTS))
    assert 0.95 < cos.min() < 1.0  # close, and not the fp32 graph under another name


def test_int8_without_a_config_quantizes_the_unfused_graph(exported, tmp_path):
    dst = tmp_path / "model.int8.onnx"
    assert ox.quantize_int8(exported[0], dst)["fused"] == {}
    # MiniLM's 48 MatMuls: the 36 with constant weights are quantized, the 12 of attention scores stay float
    assert ops(exported[0])["MatMul"] == 48
    assert (ops(dst)["MatMulInteger"], ops(dst)["MatMul"], ops(dst)["QAttention"]) == (36, 12, 0)


@pytest.mark.parametrize("fused", [True, False])
def test_fp16_keeps_fp32_inputs_and_output(st, exported, fp32, tmp_path, fused):
    dst = tmp_path / "model.fp16.onnx"
    info = ox.convert_fp16(exported[0], dst, st[0].auto_model.config if fused else None)
    assert info["method"] == ("onnxruntime transformers fusion + float16 conversion" if fused
                              else "onnxruntime float16 conversion")
    assert bool(info["fused"]) == fused
    model = onnx.load(str(dst))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.INT64] * 3
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    fp16 = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert ox.cosine_rows(embed(fp32, st, TEXTS), embed(fp16, st, TEXTS)).min() >= 0.999


def test_a_large_graph_is_written_with_external_data(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(ox, "_LARGE", 0)  # every graph counts as large (over protobuf's 2 GB)
    dst = tmp_path / "model.fp16.onnx"
    ox.convert_fp16(exported[0], dst)
    files = ox.onnx_files(dst)
    assert files[0] == dst and len(files) == 2 and files[1].is_file()
    assert dst.stat().st_size < 1_000_000 < files[1].stat().st_size  # the weights live in the data file


def test_fusion_of_an_unreadable_graph_is_skipped(st, tmp_path):
    assert ox.ort_fused(tmp_path / "missing.onnx", st[0].auto_model.config) is None


# ------------------------------------------------------------------------------------ helpers


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[5.0, 0.0], [1.0, 0.0], [-3.0, -4.0], [1.0, 1.0]])
    np.testing.assert_allclose(ox.cosine_rows(a, b), [1.0, 0.0, -1.0, 0.0])  # scale-free; a zero row gives 0


def test_quiet_logs_silences_info_and_warnings_for_a_while(caplog):
    logger = logging.getLogger("onnxruntime.quantization.test")
    with caplog.at_level(logging.INFO):
        with ox.quiet_logs():
            logger.warning("hidden")
        logger.warning("shown")
    assert [r.getMessage() for r in caplog.records] == ["shown"]


def test_tensorrt_available_says_why_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert ox.tensorrt_available() == (False, "skipped: TensorRT not installed (ModuleNotFoundError)")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert ox.tensorrt_available() == (True, "")
