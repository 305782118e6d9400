#!/usr/bin/env python3
"""Build eft's images from images/*.Dockerfile with docker, podman or buildah.

    python images/build.py                          # operator, stages, server; gpu flavour; docker/podman
    python images/build.py --flavour cpu            # the cpu flavour of stages and server (tag suffix -cpu)
    python images/build.py stages --base localhost/debian-python:bookworm --builder podman

Tags: ``<registry>/eft-<image>:<version>`` and, for the cpu flavour, ``...:<version>-cpu`` (the operator
image has one flavour). Prints one JSON line per image: tag, seconds, size in bytes.

``--host-pip-config`` mounts this machine's /etc/pip.conf and CA bundle into the build, read-only (where
the package index is reachable only through them); nothing of them ends up in an image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("operator", "stages", "server")
FLAVOURS = ("gpu", "cpu")
DEFAULT_REGISTRY = "ghcr.io/eft-ai"
HOST_PIP_FILES = ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt")


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def image_tag(image: str, flavour: str, registry: str = DEFAULT_REGISTRY, ver: str | None = None) -> str:
    suffix = "-cpu" if flavour == "cpu" and image != "operator" else ""
    return f"{registry}/eft-{image}:{ver or version()}{suffix}"


def flavour_args(image: str, flavour: str) -> dict[str, str]:
    """The build arguments that select a flavour (the Dockerfiles' defaults are the gpu flavour)."""
    if image == "operator" or flavour == "gpu":
        return {}
    return {"LOCK": f"{image}-cpu", "TENSORRT": "false"}


def pick_builder(name: str | None) -> str:
    for cand in ([name] if name else ["docker", "podman", "buildah"]):
        if shutil.which(cand):
            return cand
    raise SystemExit("images/build.py: no image builder found (docker, podman or buildah)")


def _revision() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def build_command(builder: str, image: str, tag: str, build_args: dict[str, str], host_pip: bool) -> list[str]:
    cmd: list[str]
    if builder == "docker":
        cmd = ["docker", "build", "--platform", "linux/amd64"]
    elif builder == "podman":
        # runc + cgroupfs: crun refuses hybrid cgroup hierarchies; ulimits under the machine's hard limits
        cmd = ["podman", "--cgroup-manager", "cgroupfs", "build", "--runtime", "runc", "--layers",
               "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384"]
    else:
        cmd = ["buildah", "bud", "--runtime", "runc", "--layers",
               "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384"]
    for k, v in build_args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    if host_pip:
        if builder == "docker":
            raise SystemExit("--host-pip-config needs podman or buildah (docker build has no -v)")
        for f in HOST_PIP_FILES:
            if Path(f).is_file():
                cmd += ["-v", f"{f}:{f}:ro"]
    cmd += ["-f", str(REPO / "images" / f"{image}.Dockerfile"), "-t", tag, str(REPO)]
    return cmd


def image_size(builder: str, tag: str) -> int | None:
    tool = "podman" if builder == "buildah" else builder
    proc = subprocess.run([tool, "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True)
    try:
        return int(proc.stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", metavar="IMAGE", help=f"any of {', '.join(IMAGES)} (default: all)")
    ap.add_argument("--flavour", choices=FLAVOURS, default="gpu")
    ap.add_argument("--base", help="BASE_IMAGE build argument (default: the Dockerfiles' python:3.11 slim image)")
    ap.add_argument("--registry", default=DEFAULT_REGISTRY)
    ap.add_argument("--version", default=None, help="tag (default: pyproject.toml's version)")
    ap.add_argument("--builder", choices=["docker", "podman", "buildah"])
    ap.add_argument("--host-pip-config", action="store_true",
                    help="mount /etc/pip.conf and the CA bundle into the build (read-only)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.images) - set(IMAGES))
    if unknown:
        ap.error(f"unknown image(s) {', '.join(unknown)}; choose from {', '.join(IMAGES)}")
    builder = pick_builder(args.builder)
    ver = args.version or version()
    common = {"VERSION": ver, "REVISION": _revision(),
              "CREATED": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.base:
        common["BASE_IMAGE"] = args.base
    for image in args.images or IMAGES:
        tag = image_tag(image, args.flavour, args.registry, ver)
        cmd = build_command(builder, image, tag, {**common, **flavour_args(image, args.flavour)},
                            args.host_pip_config)
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=dict(os.environ, BUILDAH_FORMAT="docker"))
        if proc.returncode != 0:
            print(f"images/build.py: building {tag} failed ({proc.returncode})", file=sys.stderr)
            return 1
        print(json.dumps({"image": image, "flavour": args.flavour, "tag": tag,
                          "seconds": round(time.monotonic() - t0, 1), "bytes": image_size(builder, tag)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
