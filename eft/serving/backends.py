"""Inference backends behind the server: ONNX Runtime (CPU, CUDA, TensorRT execution providers) and PyTorch.

A backend turns batches of token-id lists into L2-normalised float32 embeddings. Tokenization is
separate (TextTokenizer) so the server can count real tokens, enforce limits and let the batcher
group texts of similar length. The export stage measures variant quality through these same
classes, so what is measured is what is served.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eft.serving.manifest import ModelRefused, is_export_dir, load_manifest, source_model_dir, verify_files

log = logging.getLogger("eft.serving")

VARIANTS = ("fp32", "int8", "fp16")


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class TextTokenizer:
    """Token ids with the model's special tokens, optionally truncated to max_length.

    Uses the Rust `tokenizers` library on tokenizer.json when the folder has one (fast import, thread
    safe), else a transformers tokenizer object.
    """

    def __init__(self, max_length: int, folder: Path | None = None, hf_tokenizer: Any = None):
        self.max_length = int(max_length)
        self._folder = folder
        self._fast = self._fast_trunc = None
        self._hf = None
        tj = Path(folder) / "tokenizer.json" if folder is not None else None
        if hf_tokenizer is None and tj is not None and tj.is_file():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(tj))
            self._fast.no_padding()
            self._fast.no_truncation()
            self._fast_trunc = Tokenizer.from_file(str(tj))
            self._fast_trunc.no_padding()
            self._fast_trunc.enable_truncation(max_length=self.max_length)
        else:
            if hf_tokenizer is None:
                from transformers import AutoTokenizer

                hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self._hf = hf_tokenizer
            logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

    def with_max_length(self, max_length: int) -> "TextTokenizer":
        """The same tokenizer, truncating at another length."""
        if self._hf is not None:
            return TextTokenizer(max_length, hf_tokenizer=self._hf)
        return TextTokenizer(max_length, folder=self._folder)

    @property
    def vocab_size(self) -> int:
        return self._fast.get_vocab_size() if self._fast is not None else len(self._hf)

    def encode_bare(self, text: str) -> list[int]:
        """Token ids of one text without the model's special tokens."""
        if self._fast is not None:
            return self._fast.encode(text, add_special_tokens=False).ids
        return list(self._hf(text, add_special_tokens=False)["input_ids"])

    def frame(self) -> tuple[list[int], list[int]]:
        """The special tokens encode() puts before and after a text's own ids ([CLS] / [SEP] for BERT),
        found by encoding a probe with and without them."""
        full, bare = self.encode(["a"], truncate=False)[0], self.encode_bare("a")
        for k in range(len(full) - len(bare) + 1):
            if full[k : k + len(bare)] == bare:
                return full[:k], full[k + len(bare):]
        return [], []  # pragma: no cover - a template that changes the text's own tokens

    def encode(self, texts: Sequence[str], truncate: bool = True) -> list[list[int]]:
        if self._fast is not None:
            tok = self._fast_trunc if truncate else self._fast
            return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=True)]
        kw = {"truncation": True, "max_length": self.max_length} if truncate else {"truncation": False}
        return list(self._hf(list(texts), add_special_tokens=True, return_attention_mask=False,
                             return_token_type_ids=False, **kw)["input_ids"])


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 input_ids and attention_mask."""
    n, width = len(batch), max(len(x) for x in batch)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@dataclass
class ModelInfo:
    """What the server needs to know about the loaded model, whatever the backend."""

    name: str
    dimension: int
    max_length: int
    pooling: str = "unknown"
    query_prefix: str = ""
    passage_prefix: str = ""
    created: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base class: `embed(token_id_lists) -> (n, dim) float32`, rows L2-normalised."""

    kind = "base"
    variant = "fp32"
    device = "cpu"
    info: ModelInfo
    tokenizer: TextTokenizer
    pad_id: int = 0

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Convenience for offline use (export validation, quality measurement): sorted by length."""
        ids = self.tokenizer.encode(texts, truncate=True)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), self.info.dimension), dtype=np.float32)
        for i in range(0, len(ids), batch_size):
            sel = order[i : i + batch_size]
            out[sel] = self.embed([ids[j] for j in sel])
        return out

    def describe(self) -> str:
        return f"{self.kind} {self.variant} on {self.device}"

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ ONNX


def ort_providers(device: str) -> list[Any]:
    """Execution providers for a device name: cpu, cuda, tensorrt or auto."""
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in avail and gpu_present() else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in avail:
            raise ModelRefused("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                               "(install onnxruntime-gpu) — use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "tensorrt":
        if "TensorrtExecutionProvider" not in avail:
            raise ModelRefused("--device tensorrt: this onnxruntime has no TensorrtExecutionProvider")
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ModelRefused(f"unknown device {device!r}; choose cpu, cuda, tensorrt or auto")


def gpu_present() -> bool:
    """An NVIDIA device node is visible (onnxruntime-gpu lists its CUDA provider even on CPU-only nodes)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _trt_options(max_batch: int, max_len: int, fp16: bool, cache_dir: str, names: list[str]) -> dict[str, Any]:
    opt_b, opt_s = max(1, max_batch // 2), max(1, min(128, max_len))

    def shapes(b: int, s: int) -> str:
        return ",".join(f"{n}:{b}x{s}" for n in names)

    return {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache_dir,
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(opt_b, opt_s),
        "trt_profile_max_shapes": shapes(max_batch, max_len),
    }


_PROVIDER_DEVICE = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                    "TensorrtExecutionProvider": "tensorrt"}


def _session_options(threads: int | None, spinning: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or available_cpus())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning workers burn CPU the tokenizer and the event loop need (and cgroup quota).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so


def _tensorrt_providers(manifest: dict[str, Any], vfile: str, max_batch: int, fp16: bool,
                       cache_dir: str | None) -> list[Any]:
    """The TensorRT provider list for the fp32 graph `vfile`; engines are cached in `cache_dir` (default: a
    folder per model under the temp dir)."""
    names = list(manifest.get("inputs") or ["input_ids", "attention_mask"])
    fp32_sha = str(manifest["files"].get(vfile, {}).get("sha256", "model"))[:12]
    cache = cache_dir or os.path.join(tempfile.gettempdir(), f"eft-trt-cache-{fp32_sha}")
    return [("TensorrtExecutionProvider",
             _trt_options(max_batch, int(manifest["max_seq_length"]), fp16, cache, names)),
            "CUDAExecutionProvider", "CPUExecutionProvider"]


def _onnx_model_info(m: dict[str, Any], name: str, vfile: str) -> ModelInfo:
    prefixes = m.get("prefixes") or {}
    return ModelInfo(
        name=name,
        dimension=int(m["dimension"]),
        max_length=int(m["max_seq_length"]),
        pooling=str(m.get("pooling", "unknown")),
        query_prefix=prefixes.get("query", ""),
        passage_prefix=prefixes.get("passage", ""),
        created=int(m.get("created_unix") or 0),
        extra={"file": vfile},
    )


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(self, model_dir: Path, variant: str = "auto", device: str = "auto", threads: int | None = None,
                 manifest: dict[str, Any] | None = None, model_name: str | None = None, spinning: bool = False,
                 max_batch: int = 64, allow_rejected: bool = False, trt_cache: str | None = None):
        """trt_cache: the TensorRT engine cache folder (eft.settings.ServeSettings.trt_cache)."""
        self.model_dir = Path(model_dir)
        m = self.manifest = manifest or load_manifest(self.model_dir)
        options = dict(variant=variant, threads=threads, spinning=spinning, max_batch=max_batch,
                       allow_rejected=allow_rejected, trt_cache=trt_cache)
        if not self._start_session(device, **options):
            if device != "auto":
                provider = "TensorRT" if self.device == "tensorrt" else "CUDAExecutionProvider"
                raise ModelRefused(f"--device {device}: onnxruntime could not start its {provider} provider "
                                   "(no usable GPU?) — use --device cpu")
            log.warning("the CUDA provider did not start; serving on CPU")
            self._start_session("cpu", **options)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._int32 = {i.name for i in self.session.get_inputs() if i.type == "tensor(int32)"}
        self.output_name = self.session.get_outputs()[0].name
        self.pad_id = int(m.get("pad_token_id") or 0)
        self.tokenizer = TextTokenizer(int(m["max_seq_length"]), folder=self.model_dir)
        vfile = m["variants"][self.variant]["file"]
        self.info = _onnx_model_info(m, model_name or m.get("model_name") or self.model_dir.name, vfile)

    def _start_session(self, device: str, variant: str, threads: int | None, spinning: bool, max_batch: int,
                       allow_rejected: bool, trt_cache: str | None) -> bool:
        """Open the variant to serve on `device`; False when a GPU provider fell back to the CPU."""
        import onnxruntime as ort

        m = self.manifest
        providers = ort_providers(device)
        self.device = _PROVIDER_DEVICE[providers[0]]
        self.trt_fp16 = False
        if self.device == "tensorrt":
            # TensorRT builds its own reduced-precision engine from the fp32 graph.
            self.trt_fp16 = variant in ("auto", "fp16")
            choose_variant(m, "fp32", "cuda")
            self.variant = "fp32"
        else:
            self.variant = choose_variant(m, variant, self.device, allow_rejected=allow_rejected)
        vfile = m["variants"][self.variant]["file"]
        path = self.model_dir / vfile
        if self.device == "tensorrt":
            providers = _tensorrt_providers(m, vfile, max_batch, self.trt_fp16, trt_cache)
        # Dynamic int8 quantizes activations with one scale per tensor, i.e. per forward pass: batched
        # together, a text's embedding would move (cosine ~0.99) with its batch-mates and its padding.
        # One text per pass keeps every answer independent of the batch (and costs little on CPU,
        # where ONNX Runtime gains little from batching).
        self.row_by_row = self.variant == "int8"
        try:
            self.session = ort.InferenceSession(str(path), _session_options(threads, spinning), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelRefused(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        return self.device == "cpu" or self.session.get_providers()[0] != "CPUExecutionProvider"

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        if self.row_by_row and len(batch) > 1:
            return np.concatenate([self._run([row]) for row in batch])
        return self._run(batch)

    def _run(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_batch(batch, self.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feed = {k: (v.astype(np.int32) if k in self._int32 else v) for k, v in feed.items() if k in self.input_names}
        out = self.session.run([self.output_name], feed)[0]
        return l2_normalize(out)

    def describe(self) -> str:
        trt = " (TensorRT fp16)" if self.trt_fp16 else ""
        return f"onnx {self.variant}{trt} ({self.info.extra.get('file')}) on {self.device}"


def choose_variant(manifest: dict[str, Any], wanted: str, device: str, allow_rejected: bool = False) -> str:
    variants = manifest.get("variants") or {}
    usable = {k for k, v in variants.items() if v.get("status") == "accepted" and v.get("file")}
    if wanted == "auto":
        prefer = ["int8", "fp32"] if device == "cpu" else ["fp16", "fp32"]
        for v in prefer:
            if v in usable:
                return v
        if usable:
            return sorted(usable)[0]
        raise ModelRefused("the export has no accepted ONNX variant to serve")
    if wanted not in VARIANTS:
        raise ModelRefused(f"unknown variant {wanted!r}; choose auto, {', '.join(VARIANTS)}")
    v = variants.get(wanted)
    if not v:
        raise ModelRefused(f"variant {wanted} was not exported (exported: {', '.join(sorted(variants)) or 'none'})")
    if v.get("status") != "accepted" and not (allow_rejected and v.get("file")):
        why = v.get("reason") or v.get("status")
        raise ModelRefused(f"variant {wanted} is not servable: {why}")
    return wanted


# ----------------------------------------------------------------------------------------------- torch


def _sentence_transformers_dir(model_dir: Path, verify: bool) -> tuple[Path, dict[str, Any] | None]:
    """The sentence-transformers folder to load and the export's manifest (None for a plain model folder)."""
    if is_export_dir(model_dir):
        manifest = load_manifest(model_dir)
        src = source_model_dir(model_dir, manifest)
        if src is None or not src.is_dir():
            raise ModelRefused(f"{model_dir}: the torch backend needs the source sentence-transformers model "
                               f"({(manifest.get('source') or {}).get('path')}), which is missing; "
                               "pass a sentence-transformers folder or use --backend onnx")
        if verify:
            verify_files(src, (manifest.get("source") or {}).get("files") or {}, what="source model file")
        return src, manifest
    if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
        raise ModelRefused(f"{model_dir}: neither an eft export folder ({'model-manifest.json'}) nor a "
                           "sentence-transformers / Hugging Face model folder")
    return model_dir, None


def _torch_device(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelRefused(f"--device {device} is not available with the torch backend (cpu or cuda)")
    return device


def _load_sentence_transformer(st_dir: Path, manifest: dict[str, Any] | None, device: str) -> Any:
    """The model in eval mode, with the export's max sequence length and pooling when there is a manifest."""
    from eft.models import load_sentence_model
    from eft.spec import BaseModelSpec

    spec = BaseModelSpec()
    if manifest:
        pooling = manifest.get("pooling") if manifest.get("pooling") in ("mean", "cls", "lasttoken") else "mean"
        spec = BaseModelSpec(max_seq_length=int(manifest["max_seq_length"]), pooling=pooling)
    try:
        st = load_sentence_model(spec, path=str(st_dir), device=device)
    except Exception as exc:
        raise ModelRefused(f"cannot load {st_dir} as a sentence-transformers model: {exc}") from None
    if not manifest:
        st.max_seq_length = int(getattr(st, "max_seq_length", 0) or spec.max_seq_length)
    return st


def _torch_precision(st: Any, variant: str, device: str) -> str:
    """Cast the model for `variant` (auto: fp16 on a GPU); returns the variant served."""
    if variant == "fp16" or (variant == "auto" and device != "cpu"):
        st.half()
        return "fp16"
    if variant not in ("auto", "fp32"):
        raise ModelRefused(f"the torch backend serves fp32 or fp16, not {variant}")
    return "fp32"


def _torch_model_info(st: Any, manifest: dict[str, Any] | None, name: str, st_dir: Path) -> ModelInfo:
    prompts = getattr(st, "prompts", None) or {}
    prefixes = (manifest or {}).get("prefixes") or {
        "query": prompts.get("query", ""), "passage": prompts.get("passage", prompts.get("document", ""))}
    dim = (st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension")
           else st.get_sentence_embedding_dimension())
    return ModelInfo(
        name=name,
        dimension=int(dim),
        max_length=int(st.max_seq_length),
        pooling=str((manifest or {}).get("pooling", "sentence-transformers")),
        query_prefix=prefixes.get("query", ""),
        passage_prefix=prefixes.get("passage", ""),
        created=int((manifest or {}).get("created_unix") or 0),
        extra={"path": str(st_dir)},
    )


class TorchBackend(Backend):
    """sentence-transformers in PyTorch: an export folder's source model, or any ST model folder."""

    kind = "torch"

    def __init__(self, model_dir: Path, device: str = "auto", threads: int | None = None, model_name: str | None = None,
                 variant: str = "auto", verify: bool = True):
        import torch

        model_dir = Path(model_dir)
        st_dir, manifest = _sentence_transformers_dir(model_dir, verify)
        if threads:
            torch.set_num_threads(int(threads))
        device = _torch_device(device)
        st = _load_sentence_transformer(st_dir, manifest, device)
        self.variant = _torch_precision(st, variant, device)
        st.eval()
        self.st, self.device, self.torch = st, device, torch
        self.tokenizer = TextTokenizer(int(st.max_seq_length), hf_tokenizer=st.tokenizer)
        self.pad_id = int(st.tokenizer.pad_token_id or 0)
        name = model_name or (manifest or {}).get("model_name") or model_dir.name
        self.info = _torch_model_info(st, manifest, name, st_dir)

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        torch = self.torch
        ids, mask = pad_batch(batch, self.pad_id)
        feats = {"input_ids": torch.from_numpy(ids).to(self.device),
                 "attention_mask": torch.from_numpy(mask).to(self.device),
                 "token_type_ids": torch.zeros(ids.shape, dtype=torch.int64, device=self.device)}
        with torch.inference_mode():
            out = self.st.forward(feats)["sentence_embedding"]
        return l2_normalize(out.float().cpu().numpy())

    def describe(self) -> str:
        return f"torch {self.variant} on {self.device}"


def load_backend(model_dir: Path, backend: str = "auto", variant: str = "auto", device: str = "auto",
                 threads: int | None = None, model_name: str | None = None, verify: bool = True,
                 allow_rejected: bool = False, spinning: bool = False, trt_cache: str | None = None) -> Backend:
    """Pick and load a backend. Verifies the export's checksums first (ModelRefused on any mismatch).

    trt_cache: the TensorRT engine cache folder (onnx on --device tensorrt only).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelRefused(f"model folder {model_dir} does not exist")
    export = is_export_dir(model_dir)
    if backend == "auto":
        backend = "onnx" if export else "torch"
    if backend == "onnx":
        if not export:
            raise ModelRefused(f"{model_dir} has no model-manifest.json: the onnx backend serves an eft export folder "
                               "(run the export stage), or use --backend torch for a sentence-transformers folder")
        m = load_manifest(model_dir)
        if verify:
            verify_files(model_dir, m["files"])
        return OnnxBackend(model_dir, variant=variant, device=device, threads=threads, manifest=m,
                           model_name=model_name, allow_rejected=allow_rejected, spinning=spinning,
                           trt_cache=trt_cache)
    if backend == "torch":
        if export and verify:
            verify_files(model_dir, load_manifest(model_dir)["files"])
        return TorchBackend(model_dir, device=device, threads=threads, model_name=model_name, variant=variant,
                            verify=verify)
    raise ModelRefused(f"unknown backend {backend!r}; choose onnx, torch or auto")
