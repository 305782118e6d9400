"""Text helpers shared by the stages, so training, mining, evaluation and serving see the same strings."""

from __future__ import annotations

import hashlib
import re

_WS = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def passage_text(doc: dict) -> str:
    """What the model embeds for a corpus row: title and text joined by a space, as BEIR's models do."""
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}" if title else text


def content_id(text: str, prefix: str = "c") -> str:
    """A stable id derived from content only: the same text always gets the same id."""
    h = hashlib.sha256(normalize_ws(text).lower().encode("utf-8")).hexdigest()[:16]
    return f"{prefix}-{h}"
