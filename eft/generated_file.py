"""The command line shared by files generated from the spec model (the CRD, docs/reference.md): print the
generated text, rewrite the committed file, or check that the committed file is up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable


def generated_file_main(argv: list[str] | None, *, prog: str, description: str, path: Path, shown: str,
                        render: Callable[[], str], rewrite: str) -> int:
    """``shown``: the file's name in help texts; ``rewrite``: the command that rewrites it (in the message
    --check prints when the file is stale)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help=f"write {shown}")
    g.add_argument("--check", action="store_true", help=f"exit 1 when {shown} is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    elif args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != text:
            print(f"{path} is stale: run `{rewrite}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
    else:
        sys.stdout.write(text)
    return 0
