"""Token-budgeted chunking that cuts at paragraph, then sentence, boundaries.

Written here rather than taken from a text-splitting library because the budget must be counted in the
*base model's* tokens (what the encoder truncates at), and the overlap must be whole sentences where
possible so no chunk starts mid-sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PARAGRAPH = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? (optionally followed by quotes/brackets) and whitespace, not after an initial.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")


@dataclass
class Unit:
    text: str
    tokens: int
    paragraph_start: bool


def split_sentences(paragraph: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(paragraph)]
    return [p for p in parts if p]


class Chunker:
    def __init__(self, tokenizer, max_tokens: int, overlap_tokens: int, min_tokens: int = 1):
        if overlap_tokens >= max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        self.tok = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.min_tokens = min_tokens

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def _split_long(self, text: str) -> list[str]:
        """A sentence longer than the budget is cut by tokens (with token overlap) at character offsets."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        step = self.max_tokens - self.overlap_tokens
        pieces = []
        for start in range(0, len(offsets), step):
            window = offsets[start : start + self.max_tokens]
            pieces.append(text[window[0][0] : window[-1][1]].strip())
            if start + self.max_tokens >= len(offsets):
                break
        return [p for p in pieces if p]

    def units(self, text: str) -> list[Unit]:
        out: list[Unit] = []
        for para in _PARAGRAPH.split(text):
            para = " ".join(para.split())
            if not para:
                continue
            first = True
            for sent in split_sentences(para):
                n = self.count(sent)
                pieces = [sent] if n <= self.max_tokens else self._split_long(sent)
                for piece in pieces:
                    out.append(Unit(piece, n if len(pieces) == 1 else self.count(piece), first))
                    first = False
        return out

    def chunk(self, text: str) -> list[str]:
        """Greedy packing of sentences; a new chunk starts with the previous chunk's last sentences
        (up to overlap_tokens) so facts spanning a boundary appear whole in at least one chunk."""
        units = self.units(text)
        chunks: list[list[Unit]] = []
        cur: list[Unit] = []
        cur_tokens = 0
        fresh = 0  # units in `cur` that are not overlap carried from the previous chunk
        for u in units:
            # +1 per unit approximates the joining space's effect on tokenization.
            if cur and cur_tokens + u.tokens + 1 > self.max_tokens:
                if fresh:
                    chunks.append(cur)
                carry: list[Unit] = []
                carry_tokens = 0
                for prev in reversed(cur):
                    if carry_tokens + prev.tokens + 1 > self.overlap_tokens or prev.tokens + u.tokens + 1 > self.max_tokens:
                        break
                    carry.insert(0, prev)
                    carry_tokens += prev.tokens + 1
                # Never carry so much that the new unit does not fit.
                while carry and carry_tokens + u.tokens + 1 > self.max_tokens:
                    carry_tokens -= carry.pop(0).tokens + 1
                cur, cur_tokens, fresh = carry, carry_tokens, 0
            cur.append(u)
            cur_tokens += u.tokens + 1
            fresh += 1
        if cur and fresh:
            chunks.append(cur)
        texts = []
        for c in chunks:
            body = ""
            for u in c:
                sep = "\n\n" if (body and u.paragraph_start) else (" " if body else "")
                body += sep + u.text
            texts.append(body)
        return [t for t in texts if self.count(t) >= self.min_tokens]
