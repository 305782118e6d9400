"""The EmbeddingFinetune spec reference (docs/reference.md), generated from the spec model.

    python -m eft.reference            # print
    python -m eft.reference --write    # rewrite docs/reference.md
    python -m eft.reference --check    # exit 1 when docs/reference.md is stale (a test runs this)
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from eft.generated_file import generated_file_main
from eft.spec import API_GROUP, API_VERSION, EmbeddingFinetuneSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def _type_name(ann) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:  # ObjectName and the like: the constraints live in the CRD, not the table
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "map"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "object"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(ann, str(ann))


def _model_of(ann) -> type[BaseModel] | None:
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        for b in typing.get_args(a):
            if isinstance(b, type) and issubclass(b, BaseModel):
                return b
    return None


def _default(info) -> str:
    if info.default_factory is not None:
        v = info.default_factory()
        if isinstance(v, BaseModel):
            return ""
        return f"`{v}`" if v not in ({}, []) else ""
    if info.default is PydanticUndefined:
        return "required"
    return "" if info.default is None else f"`{info.default}`"


def description(info) -> str:
    """The field's text as the CRD has it: its own description, else (a block) the block's docstring."""
    text = info.description
    block = _model_of(info.annotation)
    if not text and block is not None and typing.get_origin(info.annotation) not in (list, dict):
        text = inspect.cleandoc(block.__doc__ or "")
    return " ".join((text or "").split())


def rows(model: type[BaseModel], prefix: str = "spec") -> list[tuple[str, str, str, str]]:
    out = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        path = f"{prefix}.{wire}"
        desc = description(info).replace("|", "\\|")
        out.append((path, _type_name(info.annotation), _default(info), desc))
        sub = _model_of(info.annotation)
        if sub is not None:
            out.extend(rows(sub, path + ("[]" if typing.get_origin(info.annotation) is list else "")
                            + (".*" if typing.get_origin(info.annotation) is dict else "")))
    return out


def render() -> str:
    lines = [
        "# EmbeddingFinetune reference",
        "",
        f"`apiVersion: {API_GROUP}/{API_VERSION}`, `kind: EmbeddingFinetune`. Generated from the spec model "
        "(`eft/spec.py`) by `python -m eft.reference --write`; the CRD in `crds/` comes from the same model, "
        "so `kubectl explain embeddingfinetune.spec` shows the same descriptions. Every field is optional "
        "unless marked required; unknown fields are errors.",
        "",
        "| field | type | default | description |",
        "|---|---|---|---|",
    ]
    for path, typ, default, desc in rows(EmbeddingFinetuneSpec):
        lines.append(f"| `{path}` | {typ} | {default} | {desc} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated_file_main(argv, prog="python -m eft.reference", description="print the spec reference "
                               "generated from the spec model", path=DOC, shown="docs/reference.md",
                               render=render, rewrite="python -m eft.reference --write")


if __name__ == "__main__":
    raise SystemExit(main())
