#!/usr/bin/env python3
"""The images the end-to-end tier runs: built here from images/*.Dockerfile, loaded into the test node.

No registry is reachable, so the Dockerfiles' public base image (python:3.11-slim-bookworm) is replaced,
through their BASE_IMAGE build argument, by the same thing made from Debian packages: a Debian 12 minbase
root with python3, python3-venv and ca-certificates (mmdebstrap), imported into podman's store.

    python tests/cluster/images.py build     # base (cached) + operator, stages-cpu, server-cpu
    python tests/cluster/images.py load      # into the running test cluster's containerd

The tags are the product's own (ghcr.io/eft-ai/eft-<image>:<version>[-cpu]): pods find them on the node and
never pull (imagePullPolicy IfNotPresent). Prints a JSON summary with seconds and sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.append(str(REPO))  # appended: the repository's operator/ must not shadow the stdlib's operator
from tests.support.modules import load_file_module  # noqa: E402
BASE_TAG = "localhost/eft-test/debian-python:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "python3,python3-venv,ca-certificates"
# what the e2e tier runs: the operator and the cpu flavour of the stage and serving images
BUILDS = (("operator", "cpu"), ("stages", "cpu"), ("server", "cpu"))


def image_build_module():
    return load_file_module("eft_images_build", REPO / "images" / "build.py")


def cluster_module():
    return load_file_module("eft_test_cluster", HERE / "cluster.py")


def have_image(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def build_base(cache: Path) -> float:
    """The Debian 12 + CPython 3.11 base, made once (about a minute) and kept in podman's store."""
    if have_image(BASE_TAG):
        return 0.0
    t0 = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / f"debian-{SUITE}-python.tar"
    if not tar.is_file():
        partial = cache / f"debian-{SUITE}-python.partial.tar"  # mmdebstrap picks the format by the suffix
        subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(partial), MIRROR],
                       check=True)
        partial.rename(tar)
    subprocess.run(["podman", "import", "--quiet", str(tar), BASE_TAG], check=True, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - t0, 1)


def tags() -> list[str]:
    b = image_build_module()
    return [b.image_tag(image, flavour) for image, flavour in BUILDS]


def build(host_pip: bool = True) -> dict:
    cl = cluster_module()
    summary: dict = {"base_seconds": build_base(cl.CACHE_DIR), "images": []}
    b = image_build_module()
    for image, flavour in BUILDS:
        args = [image, "--flavour", flavour, "--base", BASE_TAG, "--builder", "podman"]
        if host_pip:
            args.append("--host-pip-config")
        proc = subprocess.run([sys.executable, str(REPO / "images" / "build.py"), *args],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"building {image} ({flavour}) failed")
        summary["images"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary["tags"] = [b.image_tag(i, f) for i, f in BUILDS]
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cmd", choices=["build", "load", "tags"])
    ap.add_argument("--no-host-pip-config", action="store_true",
                    help="do not mount /etc/pip.conf and the CA bundle into the builds")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(json.dumps(build(host_pip=not args.no_host_pip_config)))
    elif args.cmd == "load":
        print(json.dumps(cluster_module().load_images(tags())))
    else:
        print("\n".join(tags()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
