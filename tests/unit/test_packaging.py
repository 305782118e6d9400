"""Packaging: the operator folder never hides Python's stdlib `operator`, the CLI entry point exists."""

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO as ROOT  # noqa: E402


def test_stdlib_operator_survives_repo_root_on_pythonpath(tmp_path):
    code = ("import collections, operator, functools; assert operator.itemgetter(1)([0, 7]) == 7; "
            "import eft.controller, eft.stages.ingest; print(operator.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(str(ROOT / "operator"))


def test_operator_code_is_reachable_only_as_eft_controller():
    import eft.controller

    assert Path(eft.controller.__file__).parent == ROOT / "operator"
    import operator

    assert hasattr(operator, "attrgetter")


def test_console_script_runs():
    exe = Path(sys.executable).parent / "eft"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "validate" in r.stdout and "operator" in r.stdout
