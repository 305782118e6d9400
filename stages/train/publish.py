"""The model the stage ships: the best validated epoch (0: the untouched base model, the last: the model
in memory), as a sentence-transformers folder in the classic layout, the spec's query and passage prefixes
saved as its 'query' and 'document' prompts."""

from __future__ import annotations

import logging
from pathlib import Path

from eft.models import load_sentence_model
from eft.spec import BaseModelSpec
from eft.stages.train.checkpoints import CheckpointStore

log = logging.getLogger("eft.train")


def best_model(model, *, best_epoch: int | None, last_epoch: int, bm: BaseModelSpec, device: str,
               store: CheckpointStore):
    """(the model of the best validated epoch, which one it is: 'last', 'base' or 'epoch N')."""
    if best_epoch is None or best_epoch == last_epoch:
        return model, "last"
    if best_epoch == 0:
        return load_sentence_model(bm, device=device), "base"
    model.load_state_dict(store.load_best(device))
    return model, f"epoch {best_epoch}"


def save_model(model, folder: Path, bm: BaseModelSpec) -> str:
    """Write ``folder``; returns its layout (for the manifest)."""
    model.eval()
    model.max_seq_length = bm.max_seq_length  # trained on shorter texts maybe; served at the full length
    prompts = {k: v for k, v in (("query", bm.query_prefix), ("document", bm.passage_prefix)) if v}
    if prompts:
        model.prompts = {**(model.prompts or {}), **prompts}
    model.save(str(folder), create_model_card=False)
    return classic_layout(folder, int(model.max_seq_length))


def classic_layout(folder: Path, max_seq_length: int) -> str:
    """Rewrite the folder in the classic sentence-transformers layout (see eft/model_folder.py)."""
    from eft.model_folder import LayoutError, write_classic_layout

    try:
        write_classic_layout(folder, max_seq_length)
    except LayoutError as exc:  # the folder still loads in sentence-transformers >= 6; say why it is not classic
        log.warning("model folder kept in the sentence-transformers 6 layout: %s", exc)
        return f"sentence-transformers 6 ({exc})"
    return "classic sentence-transformers"
