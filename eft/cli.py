"""The `eft` command line: validate, run, stage, serve, operator, crd."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from eft.spec import STAGES, SpecError, load_spec


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers", "filelock", "faiss.loader", "beir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Never reach for the Hugging Face hub unless the user opted in: the bundled model is local.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load(path: str):
    try:
        return load_spec(path)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_validate(args: argparse.Namespace) -> int:
    efr = _load(args.file)
    print(f"{args.file}: valid EmbeddingFinetune '{efr.name}' (sdg backend {efr.spec.sdg.backend}, "
          f"base model {efr.spec.base_model.name})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from eft.pipeline import load_stage_module
    from eft.runner import default_workspace, run_pipeline, summary_table

    efr = _load(args.file)
    ws = Path(args.workspace) if args.workspace else default_workspace(efr)
    try:
        outcomes = run_pipeline(efr, ws, args.start, args.until, args.force)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(summary_table(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    # Stages may print a human report of their output (metrics table, served-model smoke check).
    if not failed:
        for o in outcomes:
            report = getattr(load_stage_module(o.stage), "report", None)
            if callable(report):  # a stage package may hold a submodule of that name
                text = report(Path(ws).resolve() / o.stage)
                if text:
                    print()
                    print(text)
    return 1 if failed else 0


def cmd_stage(args: argparse.Namespace) -> int:
    from eft.pipeline import (EXIT_PERMANENT, EXIT_RETRYABLE, StageFailed, execute_stage, is_up_to_date,
                              write_termination_message)
    from eft.settings import StageSettings
    from eft.workspace import Workspace

    efr = _load(args.spec)
    settings = StageSettings.from_env()
    ws = Workspace(Path(args.workspace))
    ws.root.mkdir(parents=True, exist_ok=True)

    def report(text: str) -> None:
        write_termination_message(text, settings.termination_log)

    try:
        if not args.force and is_up_to_date(efr, ws, args.name):
            m = ws.manifest(args.name) or {}
            print(f"{args.name}: up to date, skipped")
            report(m.get("summary") or f"{args.name}: up to date")
            return 0
        manifest = execute_stage(efr, ws, args.name, settings=settings)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        report(str(exc))
        return EXIT_RETRYABLE if exc.retryable else EXIT_PERMANENT
    print(f"{args.name}: done in {manifest['seconds']:.1f}s {manifest['counts']}")
    report(manifest.get("summary") or f"{args.name}: succeeded")
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eft", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a spec file; prints every problem with its field path")
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run the pipeline locally, skipping stages whose output is up to date")
    r.add_argument("file")
    r.add_argument("--workspace", help="run folder (default ./eft-workspace/<metadata.name>)")
    r.add_argument("--from", dest="start", choices=STAGES, help="first stage to run (earlier ones must be complete)")
    r.add_argument("--until", choices=STAGES, help="last stage to run")
    r.add_argument("--force", action="store_true", help="re-run the selected stages even if up to date")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("stage", help="run one stage (the entry point of the operator's Jobs)")
    s.add_argument("name", choices=STAGES)
    s.add_argument("--spec", required=True)
    s.add_argument("--workspace", required=True)
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_stage)

    for name, module, help_ in (
        ("serve", "eft.serving.cli", "serve an exported model at an OpenAI-compatible /v1/embeddings"),
        ("operator", "eft.controller.main", "run the Kubernetes operator (kopf)"),
        ("crd", "eft.crd", "print the EmbeddingFinetune CustomResourceDefinition generated from the spec model"),
    ):
        d = sub.add_parser(name, help=help_, add_help=False)
        d.set_defaults(func=None, delegate=module)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    if getattr(args, "delegate", None):
        return _delegate(args.delegate, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from eft.settings import SettingsError

    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
