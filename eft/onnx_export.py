"""ONNX export of a sentence-transformers model as one embedding function, its variants, and a TensorRT engine.

The graph is the whole embedding function: (input_ids, attention_mask[, token_type_ids]) -> the
model's own post-transformer modules (Pooling per its config: mean / cls / lasttoken..., Dense...) ->
L2 normalisation, with dynamic batch and sequence axes.

Exporter: torch 2.15's default `torch.onnx.export(dynamo=True)` needs onnxscript and emits opset 18
natively; asked for opset 17 (the spec's default) its down-conversion fails on the Reduce* ops. The
TorchScript exporter (`dynamo=False`, deprecated but present) writes exactly the requested opset
(17-20), needs no extra package and is ~4x faster, so it is the first choice. Tracing records one
path through Python branches, so the trace input is a padded batch of unequal lengths (the general
masking path) and every export is validated against PyTorch at several batch shapes; if the
TorchScript exporter is unavailable or fails validation, the dynamo exporter is tried when onnxscript
is installed (at opset max(requested, 18)). The manifest records which exporter and opset were used.

Attention is exported in "eager" form (explicit matmul/softmax), which ONNX Runtime's transformer
optimizer recognises and fuses into its Attention kernel (SDPA's exported pattern is not fused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("eft.export")

OUTPUT_NAME = "sentence_embedding"
_LARGE = 1_800_000_000  # bytes: above this, graphs are written with external data


class ExportError(Exception):
    """Export cannot proceed; one line for humans."""


# ------------------------------------------------------------------------------------ the graph


def _torch():
    import torch

    return torch


def model_facts(st: Any) -> dict[str, Any]:
    """Pooling, dimension, max length, inputs and module list of a SentenceTransformer."""
    modules = list(st)
    if not modules or not hasattr(modules[0], "auto_model"):
        raise ExportError(f"the first module is {type(modules[0]).__name__ if modules else 'missing'}, "
                          "expected a sentence-transformers Transformer (a Hugging Face encoder)")
    pooling = "none"
    for m in modules[1:]:
        if type(m).__name__ == "Pooling":
            pm = getattr(m, "pooling_mode", None)
            if pm is None and hasattr(m, "get_config_dict"):
                pm = m.get_config_dict().get("pooling_mode")
            if pm is None:  # sentence-transformers < 5 keeps one boolean per mode
                cfg = m.get_config_dict()
                pm = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                      for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            pooling = pm if isinstance(pm, str) else "+".join(pm)
    tok = st.tokenizer
    names = list(getattr(tok, "model_input_names", ["input_ids", "attention_mask"]))
    auto = modules[0].auto_model
    import inspect

    takes_types = "token_type_ids" in inspect.signature(auto.forward).parameters
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in names and takes_types else [])
    dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else \
        st.get_sentence_embedding_dimension()
    return {
        "pooling": pooling,
        "dimension": int(dim),
        "max_seq_length": int(st.max_seq_length),
        "inputs": inputs,
        "modules": [type(m).__name__ for m in modules],
        "normalize_module": any(type(m).__name__ == "Normalize" for m in modules),
        "pad_token_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
        "architecture": type(auto).__name__,
        "model_type": getattr(auto.config, "model_type", ""),
    }


def _embedding_graph(st: Any, inputs: Sequence[str]):
    torch = _torch()

    class EmbeddingGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = st[0].auto_model
            self.post = torch.nn.ModuleList(list(st)[1:])
            self.with_types = "token_type_ids" in inputs

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if self.with_types else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
            feats = {"input_ids": input_ids, "attention_mask": attention_mask, "token_embeddings": hidden}
            if self.with_types:
                feats["token_type_ids"] = token_type_ids
            for mod in self.post:
                feats = mod(feats)
            return torch.nn.functional.normalize(feats["sentence_embedding"], p=2.0, dim=1)

    return EmbeddingGraph().eval()


@contextlib.contextmanager
def _eager_attention(st: Any):
    """Export with explicit attention ops (fusable by ONNX Runtime), then restore the model's setting."""
    auto = st[0].auto_model
    before = getattr(auto.config, "_attn_implementation", None)
    changed = False
    if before not in (None, "eager") and hasattr(auto, "set_attn_implementation"):
        try:
            auto.set_attn_implementation("eager")
            changed = True
        except Exception:  # some architectures support only one implementation
            pass
    try:
        yield
    finally:
        if changed:
            auto.set_attn_implementation(before)


def _trace_inputs(st: Any, inputs: Sequence[str]):
    enc = st.tokenizer(["a short text", "a longer example sentence that forces padding of the first one"],
                       padding=True, return_tensors="pt")
    return tuple(enc[n] if n in enc else _torch().zeros_like(enc["input_ids"]) for n in inputs)


def export_onnx(st: Any, path: Path, opset: int = 17, exporter: str = "auto") -> dict[str, Any]:
    """Write the embedding graph to `path`. Returns {"exporter", "opset", "inputs"}."""
    facts = model_facts(st)
    inputs = facts["inputs"]
    path = Path(path)
    errors: list[str] = []
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    for kind in order:
        try:
            used_opset = _export_once(st, path, opset, kind, inputs)
            return {"exporter": kind, "opset": used_opset, "inputs": inputs}
        except ExportError as exc:
            errors.append(f"{kind}: {exc}")
        except Exception as exc:  # exporters raise many types
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        log.warning("ONNX exporter %s failed: %s", kind, errors[-1])
    raise ExportError("ONNX export failed (" + "; ".join(errors) + ")")


def _export_once(st: Any, path: Path, opset: int, kind: str, inputs: Sequence[str]) -> int:
    torch = _torch()
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    graph = _embedding_graph(st, inputs)
    args = _trace_inputs(st, inputs)
    dyn_axes = {n: {0: "batch", 1: "sequence"} for n in inputs} | {OUTPUT_NAME: {0: "batch"}}
    with _eager_attention(st), torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            torch.onnx.export(graph, args, str(path), dynamo=False, opset_version=opset, input_names=list(inputs),
                              output_names=[OUTPUT_NAME], dynamic_axes=dyn_axes, do_constant_folding=True)
            used = opset
        elif kind == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise ExportError("needs the onnxscript package") from None
            used = max(opset, 18)
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            seq = torch.export.Dim("sequence", min=1, max=1 << 16)
            shapes = {n: {0: batch, 1: seq} for n in inputs}
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                prog = torch.onnx.export(graph, args, None, dynamo=True, opset_version=used, input_names=list(inputs),
                                         output_names=[OUTPUT_NAME], dynamic_shapes=shapes, optimize=True)
            prog.save(str(path), external_data=_param_bytes(graph) > _LARGE)
        else:
            raise ExportError(f"unknown exporter {kind!r}")
    if not path.is_file():
        raise ExportError("the exporter wrote no file")
    return used


def _param_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def onnx_files(path: Path) -> list[Path]:
    """The graph file and any external-data files it references."""
    import onnx

    path = Path(path)
    files = [path]
    m = onnx.load(str(path), load_external_data=False)
    locs = set()
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                locs.add(kv.value)
    files += [path.parent / loc for loc in sorted(locs)]
    return files


# ------------------------------------------------------------------------------------ variants


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING):
    """ONNX Runtime's fusion and quantization tools log every step at INFO (and a hint at WARNING)."""
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _fusion_params(config: Any) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


def ort_fused(src: Path, config: Any, use_gpu: bool = False):
    """ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu...) or None if not applicable."""
    try:
        from onnxruntime.transformers import optimizer
    except ImportError:  # pragma: no cover
        return None
    heads, hidden = _fusion_params(config)
    try:
        with quiet_logs():
            opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden,
                                           opt_level=0, use_gpu=use_gpu)
    except Exception as exc:
        log.info("ORT fusion not applied: %s", exc)
        return None
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return opt, stats


def quantize_int8(src: Path, dst: Path, config: Any = None) -> dict[str, Any]:
    """Dynamic int8 (per-channel weights, MatMul/Attention with constant weights only) after ORT fusion."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.stem + ".fused.tmp.onnx")
    fused = ort_fused(src, config) if config is not None else None
    qsrc = src
    stats: dict[str, int] = {}
    large = src.stat().st_size > _LARGE
    if fused is not None:
        opt, stats = fused
        with quiet_logs():
            opt.save_model_to_file(str(tmp), use_external_data_format=large)
        qsrc = tmp
    try:
        with quiet_logs():  # quantize_dynamic logs a pre-processing suggestion at WARNING on the root logger
            quantize_dynamic(str(qsrc), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Attention"], use_external_data_format=large,
                             extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1})
    finally:
        for p in dst.parent.glob(tmp.name + "*"):
            p.unlink()
    return {"method": "onnxruntime quantize_dynamic int8 (per-channel weights, dynamic uint8 activations)",
            "fused": stats}


def convert_fp16(src: Path, dst: Path, config: Any = None) -> dict[str, Any]:
    """fp16 weights and activations with fp32 inputs/outputs (for the CUDA execution provider)."""
    import onnx

    src, dst = Path(src), Path(dst)
    large = src.stat().st_size > _LARGE
    fused = ort_fused(src, config, use_gpu=True) if config is not None else None
    if fused is not None:
        opt, stats = fused
        with quiet_logs():
            opt.convert_float_to_float16(keep_io_types=True)
            opt.save_model_to_file(str(dst), use_external_data_format=large)
        return {"method": "onnxruntime transformers fusion + float16 conversion", "fused": stats}
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(m, str(dst), save_as_external_data=large)
    return {"method": "onnxruntime float16 conversion", "fused": {}}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


# ------------------------------------------------------------------------------------ TensorRT


def tensorrt_available() -> tuple[bool, str]:
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"skipped: TensorRT not installed ({type(exc).__name__})"
    return True, ""


def build_tensorrt(onnx_path: Path, engine_path: Path, inputs: Sequence[str], max_batch: int, max_len: int,
                   fp16: bool = True, fp8: bool = False, workspace_gib: int = 4) -> dict[str, Any]:
    """Build a serialized TensorRT engine with one optimisation profile over batch and sequence length."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") \
            and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {Path(onnx_path).name}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    precisions = ["fp32"]
    notes = []
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
        precisions.append("fp16")
    if fp8:
        notes.append("fp8 requested: TensorRT uses FP8 only from a graph with FP8 Q/DQ nodes (NVIDIA ModelOpt "
                     "calibration), which eft does not produce yet; engine built without FP8")
    opt_b, opt_s = max(1, max_batch // 2), max(1, min(128, max_len))
    profile = builder.create_optimization_profile()
    for name in inputs:
        profile.set_shape(name, (1, 1), (opt_b, opt_s), (max_batch, max_len))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError("TensorRT engine build failed (see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(blob))
    return {
        "engine": Path(engine_path).name,
        "tensorrt_version": trt.__version__,
        "precisions": precisions,
        "profiles": [{"inputs": list(inputs), "min": [1, 1], "opt": [opt_b, opt_s], "max": [max_batch, max_len]}],
        "notes": notes,
    }


def run_tensorrt(engine_path: Path, ids: np.ndarray, mask: np.ndarray, inputs: Sequence[str]) -> np.ndarray:
    """Run a built engine once (through torch CUDA tensors) for validation."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    ctx = engine.create_execution_context()
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    keep = []
    for name in inputs:
        t = torch.from_numpy(feeds[name].astype(np.int64)).cuda()
        if str(engine.get_tensor_dtype(name)).endswith("INT32"):
            t = t.to(torch.int32)
        ctx.set_input_shape(name, tuple(t.shape))
        ctx.set_tensor_address(name, t.data_ptr())
        keep.append(t)
    out = torch.empty((ids.shape[0], tuple(ctx.get_tensor_shape(OUTPUT_NAME))[-1]), dtype=torch.float32,
                      device="cuda")
    if str(engine.get_tensor_dtype(OUTPUT_NAME)).endswith("HALF"):
        out = out.half()
    ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
    stream = torch.cuda.Stream()
    ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out.float().cpu().numpy()
