#!/usr/bin/env python3
"""Build (or reuse) the binaries of the test control plane from the Go module proxy.

Binaries: kube-apiserver, kube-controller-manager, kubectl (one pinned Kubernetes
release), etcd (3.5.x) and helm (v3). Each comes from its own small Go module
next to this file (kube/, etcd/, helm/), whose go.mod/go.sum pin every version.

The binaries go into a cache folder outside the work tree, keyed by versions:

    ${EFT_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/eft/controlplane}/
        k8s-v1.34.4_etcd-v3.5.35_helm-v3.22.0/bin/

and are reused when present (the build only runs when one is missing).

Usage:
    python tests/controlplane/build.py            # build when missing, print a summary
    python tests/controlplane/build.py --check    # only report; exit 1 when missing
    python tests/controlplane/build.py --print-bin-dir
    python tests/controlplane/build.py regen --kubernetes v1.34.4 \
        --etcd v3.5.35 --helm v3.22.0     # rewrite the go.mod files (then go mod tidy)

Stdlib only. Importable: ``ensure_binaries(build=False)`` returns a dict of
name -> path, or None when something is missing and build is False.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name of the component in the cache key -> module dir, pinned upstream module,
# and the binaries built from it (binary name -> package to build).
MODULES = {
    "k8s": {
        "dir": HERE / "kube",
        "module": "k8s.io/kubernetes",
        "binaries": {
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            # the real-cluster tier (tests/cluster/): a node that runs pods
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
    },
    "etcd": {
        "dir": HERE / "etcd",
        "module": "go.etcd.io/etcd/server/v3",
        "binaries": {"etcd": "."},
    },
    "helm": {
        "dir": HERE / "helm",
        "module": "helm.sh/helm/v3",
        "binaries": {"helm": "helm.sh/helm/v3/cmd/helm"},
    },
}

BINARIES = [b for m in MODULES.values() for b in m["binaries"]]


class BuildError(RuntimeError):
    pass


# --------------------------------------------------------------------------- versions


def _required_version(gomod: Path, module: str) -> str:
    text = gomod.read_text()
    m = re.search(r"^\s*(?:require\s+)?" + re.escape(module) + r"\s+(v\S+)", text, re.M)
    if not m:
        raise BuildError(f"{gomod}: no require line for {module}")
    return m.group(1)


def versions() -> dict[str, str]:
    """Pinned versions, read from the committed go.mod files."""
    return {k: _required_version(m["dir"] / "go.mod", m["module"]) for k, m in MODULES.items()}


def cache_root() -> Path:
    env = os.environ.get("EFT_CONTROLPLANE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "eft" / "controlplane"


def cache_key(vers: dict[str, str] | None = None) -> str:
    vers = vers or versions()
    return "_".join(f"{k}-{vers[k]}" for k in MODULES)


def bin_dir(vers: dict[str, str] | None = None) -> Path:
    return cache_root() / cache_key(vers) / "bin"


def _present(bdir: Path) -> dict[str, str] | None:
    paths = {name: bdir / name for name in BINARIES}
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
        return {name: str(p) for name, p in paths.items()}
    return None


# --------------------------------------------------------------------------- go


def find_go() -> str | None:
    go = shutil.which("go")
    if go:
        return go
    for cand in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go", str(Path.home() / "go" / "bin" / "go")):
        if os.access(cand, os.X_OK):
            return cand
    return None


def go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # never download another toolchain
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    env["GOWORK"] = "off"
    env["CGO_ENABLED"] = "0"
    if not env.get("GOPROXY"):
        env["GOPROXY"] = "https://proxy.golang.org,direct"
    env.update(extra or {})
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], quiet: bool = False) -> str:
    if not quiet:
        where = cwd.relative_to(HERE.parent.parent) if cwd.is_relative_to(HERE.parent.parent) else cwd
        print(f"+ (cd {where} && {shlex.join(cmd)})", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-6000:]}")
    return proc.stdout


def go_version(go: str) -> str:
    out = subprocess.run([go, "env", "GOVERSION"], env=go_env(), stdout=subprocess.PIPE, text=True).stdout
    return out.strip()


# --------------------------------------------------------------------------- ldflags


def _ldflags(component: str, vers: dict[str, str], mod_dir: Path) -> str:
    flags = ["-s", "-w"]
    if component == "k8s":
        v = vers["k8s"]
        major, minor = v.lstrip("v").split(".")[:2]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={v}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
            ]
    elif component == "helm":
        v = vers["helm"]
        flags += [f"-X helm.sh/helm/v3/internal/version.version={v}"]
        # as helm's Makefile: default .Capabilities.KubeVersion follows the client-go it links
        cg = _required_version(mod_dir / "go.mod", "k8s.io/client-go").lstrip("v").split(".")
        kmaj, kmin = str(int(cg[0]) + 1), cg[1]
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {pkg}.k8sVersionMajor={kmaj}", f"-X {pkg}.k8sVersionMinor={kmin}"]
    return " ".join(flags)


# --------------------------------------------------------------------------- build


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(verbose: bool = True) -> dict:
    """Build every missing binary into bin_dir(); returns a summary dict."""
    go = find_go()
    if not go:
        raise BuildError(
            "Go is not installed (no `go` on PATH): the test control plane is built from the Go "
            "module proxy and needs Go >= 1.26. Install Go, or point EFT_CONTROLPLANE_CACHE at a "
            "folder that already holds the binaries."
        )
    vers = versions()
    bdir = bin_dir(vers)
    summary = {"versions": vers, "bin_dir": str(bdir), "go": go_version(go), "built": [], "seconds": {}}
    with _lock(bdir.parent / ".lock"):
        t_all = time.monotonic()
        for comp, spec in MODULES.items():
            missing = [b for b in spec["binaries"] if not (bdir / b).is_file()]
            if not missing:
                continue
            env = go_env()
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix=f"build-{comp}-", dir=bdir.parent) as tmp:
                pkgs = [spec["binaries"][b] for b in missing]
                cmd = [go, "build", "-trimpath", "-ldflags", _ldflags(comp, vers, spec["dir"]),
                       "-o", tmp + os.sep, *pkgs]
                _run(cmd, spec["dir"], env, quiet=not verbose)
                bdir.mkdir(parents=True, exist_ok=True)
                for b in missing:
                    src = Path(tmp) / b
                    if not src.is_file():
                        produced = sorted(p.name for p in Path(tmp).iterdir())
                        raise BuildError(f"go build did not produce {b} (got {produced})")
                    os.replace(src, bdir / b)
            summary["built"] += missing
            summary["seconds"][comp] = round(time.monotonic() - t0, 1)
        summary["seconds"]["total"] = round(time.monotonic() - t_all, 1)
        if summary["built"]:
            manifest = dict(summary, built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            (bdir.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return summary


def ensure_binaries(build: bool = False, verbose: bool = False) -> dict[str, str] | None:
    """Paths of all control-plane binaries, keyed by name.

    Returns None when a binary is missing and ``build`` is False (or Go is missing and
    ``build`` is True: then BuildError is raised instead).
    """
    found = _present(bin_dir())
    if found or not build:
        return found
    globals()["build"](verbose=verbose)
    found = _present(bin_dir())
    if not found:
        raise BuildError(f"build finished but binaries are missing in {bin_dir()}")
    return found


# --------------------------------------------------------------------------- regen


def _download_gomod(go: str, module: str, version: str) -> str:
    out = _run([go, "mod", "download", "-json", f"{module}@{version}"], HERE, go_env(), quiet=True)
    info = json.loads(out)
    if info.get("Error"):
        raise BuildError(info["Error"])
    return Path(info["GoMod"]).read_text()


def _replace_lines(upstream: str, staging_version: str | None) -> list[str]:
    """Turn the upstream replace directives into ones valid for a consumer module.

    Local-path replacements of Kubernetes staging modules (k8s.io/X => ./staging/src/k8s.io/X)
    become k8s.io/X => k8s.io/X <staging_version>; other local paths are dropped;
    module replacements are copied as they are.
    """
    lines: list[str] = []
    directives = re.findall(r"^replace\s*\((.*?)^\)", upstream, re.M | re.S)
    body = "\n".join(directives) + "\n" + "\n".join(re.findall(r"^replace\s+([^(\n].*)$", upstream, re.M))
    for raw in body.splitlines():
        line = raw.split("//")[0].strip()
        if not line:
            continue
        left, _, right = (s.strip() for s in line.partition("=>"))
        target = right.split()
        if target and (target[0].startswith("./") or target[0].startswith("../")):
            if staging_version and target[0].startswith("./staging/src/"):
                mod = left.split()[0]
                lines.append(f"\t{mod} => {mod} {staging_version}")
            continue
        lines.append(f"\t{left} => {right}")
    return lines


def _header(upstream: str) -> list[str]:
    out = []
    m = re.search(r"^go\s+(\S+)", upstream, re.M)
    if m:
        out.append(f"go {m.group(1)}")
    for g in re.findall(r"^godebug\s+(.+)$", upstream, re.M):
        out.append(f"godebug {g.strip()}")
    return out


def regen(k8s: str, etcd: str, helm: str) -> None:
    go = find_go()
    if not go:
        raise BuildError("Go is not installed")
    minor_patch = ".".join(k8s.lstrip("v").split(".")[1:3])
    plans = {
        "k8s": ("k8s.io/kubernetes", k8s, f"v0.{minor_patch}"),
        "etcd": ("go.etcd.io/etcd/server/v3", etcd, None),
        "helm": ("helm.sh/helm/v3", helm, None),
    }
    for comp, (module, version, staging) in plans.items():
        upstream = _download_gomod(go, module, version)
        d = MODULES[comp]["dir"]
        text = [
            "// Generated by tests/controlplane/build.py regen from the upstream go.mod of",
            f"// {module}@{version}; then `go mod tidy`. Do not edit by hand.",
            f"module eft.local/controlplane/{d.name}",
            "",
            *_header(upstream),
            "",
            f"require {module} {version}",
        ]
        repl = _replace_lines(upstream, staging)
        if repl:
            text += ["", "replace (", *repl, ")"]
        (d / "go.mod").write_text("\n".join(text) + "\n")
        (d / "go.sum").unlink(missing_ok=True)
        _run([go, "mod", "tidy"], d, go_env())
        print(f"regenerated {d / 'go.mod'} ({len(repl)} replace lines)")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    rg = sub.add_parser("regen", help="rewrite the go.mod files for new upstream versions")
    rg.add_argument("--kubernetes", required=True)
    rg.add_argument("--etcd", required=True)
    rg.add_argument("--helm", required=True)
    ap.add_argument("--check", action="store_true", help="only report whether the binaries exist")
    ap.add_argument("--print-bin-dir", action="store_true", help="print the bin folder and exit")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "regen":
            regen(args.kubernetes, args.etcd, args.helm)
            return 0
        if args.print_bin_dir:
            print(bin_dir())
            return 0
        vers = versions()
        t0 = time.monotonic()
        found = _present(bin_dir(vers))
        summary = None
        if not found and not args.check:
            summary = build()
            found = _present(bin_dir(vers))
        print("control plane: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
        print(f"  bin dir: {bin_dir(vers)}")
        for name in BINARIES:
            p = bin_dir(vers) / name
            print(f"  {name:<24} {'ok' if p.is_file() else 'MISSING'}")
        if summary and summary["built"]:
            print(f"  built {', '.join(summary['built'])} with {summary['go']}: "
                  + ", ".join(f"{k} {v}s" for k, v in summary["seconds"].items()))
        else:
            print(f"  reused cached binaries ({time.monotonic() - t0:.1f}s)" if found else "  not built (--check)")
        return 0 if found else 1
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
