"""`eft operator`: run the EmbeddingFinetune operator (kopf) against the current kubeconfig or in-cluster."""

from __future__ import annotations

import argparse
import logging
import sys

from eft.controller.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eft operator", description=__doc__)
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="namespace to watch (repeatable; also $EFT_NAMESPACES, comma-separated); "
                        "default: all namespaces")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("--image", help="default stage image ($EFT_IMAGE)")
    p.add_argument("--serving-image", help="default serving image ($EFT_SERVING_IMAGE)")
    p.add_argument("--image-pull-policy", choices=["Always", "IfNotPresent", "Never"])
    p.add_argument("--resync-seconds", type=float, help="reconcile every object at least this often (default 60)")
    p.add_argument("--workers", type=int, help="concurrent reconciles (default 4)")
    p.add_argument("--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (kopf included)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings, with the flags given on the command line in their place."""
    # -A: every namespace, whatever $EFT_NAMESPACES says; no -n: the environment's namespaces
    namespaces = () if args.all_namespaces else (tuple(args.namespace) or None)
    return Settings.from_env(image=args.image, serving_image=args.serving_image,
                             image_pull_policy=args.image_pull_policy, resync_seconds=args.resync_seconds,
                             workers=args.workers, namespaces=namespaces)


def main(argv: list[str] | None = None) -> int:
    import kopf

    from eft.controller.controller import Controller
    from eft.controller.handlers import registry

    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("eft.operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:  # a malformed $EFT_* value or platform policy: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    controller = Controller(settings)
    kopf.run(
        registry=registry,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        standalone=True,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(controller=controller),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
