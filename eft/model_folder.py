"""The model folder the train stage ships, in the classic sentence-transformers layout that every reader knows.

sentence-transformers 6 saves its own newer layout: module classes under ``sentence_transformers.base...``,
``sentence_bert_config.json`` with ``transformer_task`` / ``modality_config`` and no ``max_seq_length``,
``1_Pooling/config.json`` as ``{"embedding_dimension", "pooling_mode": "mean"}``. Only sentence-transformers
6 reads that. The classic layout (sentence-transformers 2-5, which 6 still loads) is what the ecosystem
reads: Infinity (through sentence-transformers 3), text-embeddings-inference (``1_Pooling/config.json``'s
``pooling_mode_*`` keys), and anyone loading the folder with plain ``transformers`` and pooling by hand.
So after saving, the stage rewrites the three layout files into that form; weights, tokenizer and
``config.json`` are untouched, and ``config_sentence_transformers.json`` (prompts) is already classic.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

CLASSIC_MODULES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Normalize": "sentence_transformers.models.Normalize",
}
# pooling mode name (sentence-transformers >= 6) -> the classic config key
POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
NEW_ONLY_KEYS = {"transformer_task", "modality_config", "module_output_name", "embedding_dimension", "pooling_mode"}


class LayoutError(ValueError):
    """The folder cannot be written in (or does not follow) the classic layout; one line for humans."""


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _class_name(type_path: str) -> str:
    return type_path.rsplit(".", 1)[-1]


def classic_pooling_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A 1_Pooling/config.json in the classic keys, from either layout."""
    if "word_embedding_dimension" in cfg:
        return cfg
    modes = cfg.get("pooling_mode", "mean")
    modes = [modes] if isinstance(modes, str) else list(modes)
    unknown = [m for m in modes if m not in POOLING_KEYS]
    if unknown:
        raise LayoutError(f"pooling mode {unknown[0]!r} has no classic sentence-transformers key")
    out: dict[str, Any] = {"word_embedding_dimension": int(cfg["embedding_dimension"])}
    out.update({key: name in modes for name, key in POOLING_KEYS.items()})
    out["include_prompt"] = bool(cfg.get("include_prompt", True))
    return out


def write_classic_layout(folder: Path, max_seq_length: int, do_lower_case: bool = False) -> None:
    """Rewrite a saved sentence-transformers folder's layout files into the classic form (idempotent)."""
    folder = Path(folder)
    modules = _read(folder / "modules.json")
    # Every module is checked before any file is written: a refusal leaves the folder as it was saved.
    unknown = [m["type"] for m in modules if _class_name(m["type"]) not in CLASSIC_MODULES]
    if unknown:
        raise LayoutError(f"module {unknown[0]} has no classic sentence-transformers equivalent")
    for m in modules:
        if _class_name(m["type"]) == "Pooling":
            pool_dir = folder / m["path"] if m["path"] else folder
            classic_pooling_config(_read(pool_dir / "config.json"))  # raises for a mode with no classic key
    for m in modules:
        name = _class_name(m["type"])
        m["type"] = CLASSIC_MODULES[name]
        sub = folder / m["path"] if m["path"] else folder
        if name == "Transformer":
            _write(sub / "sentence_bert_config.json", {"max_seq_length": int(max_seq_length),
                                                       "do_lower_case": bool(do_lower_case)})
        elif name == "Pooling":
            _write(sub / "config.json", classic_pooling_config(_read(sub / "config.json")))
        elif name == "Normalize" and m["path"] and (sub / "config.json").is_file():
            # Classic Normalize has no configuration; the newer one only names its tensors.
            (sub / "config.json").unlink()
            if not any(sub.iterdir()):
                shutil.rmtree(sub)
    _write(folder / "modules.json", modules)


def layout_problems(folder: Path) -> list[str]:
    """What keeps a folder from being a classic sentence-transformers model ([] when it is one)."""
    folder = Path(folder)
    problems = []
    try:
        modules = _read(folder / "modules.json")
    except (OSError, ValueError) as exc:
        return [f"modules.json unreadable: {exc}"]
    for m in modules:
        if m["type"] not in CLASSIC_MODULES.values():
            problems.append(f"modules.json: {m['type']} is not a classic module class")
        sub = folder / m["path"] if m["path"] else folder
        name = _class_name(m["type"])
        if name == "Transformer":
            cfg = _read(sub / "sentence_bert_config.json")
            if not isinstance(cfg.get("max_seq_length"), int):
                problems.append("sentence_bert_config.json has no max_seq_length")
            problems += [f"sentence_bert_config.json has {k!r}" for k in sorted(NEW_ONLY_KEYS & set(cfg))]
        elif name == "Pooling":
            cfg = _read(sub / "config.json")
            if not isinstance(cfg.get("word_embedding_dimension"), int):
                problems.append(f"{m['path']}/config.json has no word_embedding_dimension")
            if sum(bool(cfg.get(k)) for k in POOLING_KEYS.values()) < 1:
                problems.append(f"{m['path']}/config.json sets no pooling_mode_* key")
            problems += [f"{m['path']}/config.json has {k!r}" for k in sorted(NEW_ONLY_KEYS & set(cfg))]
    return problems


def pooling_of(folder: Path) -> list[str]:
    """The pooling modes the folder's 1_Pooling config switches on (mean, cls, ...), as a classic reader sees them."""
    modules = _read(Path(folder) / "modules.json")
    pool = next(m for m in modules if _class_name(m["type"]) == "Pooling")
    cfg = classic_pooling_config(_read(Path(folder) / pool["path"] / "config.json"))
    return [name for name, key in POOLING_KEYS.items() if cfg.get(key)]
