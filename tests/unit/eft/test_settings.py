"""Process settings: read from EFT_* variables in one place per process, malformed values named clearly."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from eft.settings import ServeSettings, SettingsError, StageSettings
from tests.support.paths import REPO

# The only modules that may read EFT_* variables: one per process kind (stage/server, operator).
SETTINGS_MODULES = {REPO / "eft" / "settings.py", REPO / "operator" / "settings.py"}
ENV_READ = re.compile(r"""(environ(\.get)?\(|environ\[|getenv\()\s*["']EFT_""")


def test_defaults_without_variables():
    s = StageSettings.from_env({})
    assert s == StageSettings()
    assert (s.device, s.threads, s.train_workers, s.token_cache) == (None, None, None, True)
    assert (s.checkpoint_steps, s.checkpoint_seconds, s.stop_after_steps, s.smoke_test) == (500, 600.0, None, True)
    assert ServeSettings.from_env({}) == ServeSettings()


def test_variables_are_read_and_typed():
    s = StageSettings.from_env({"EFT_DEVICE": "cuda:1", "EFT_THREADS": "3", "EFT_TRAIN_WORKERS": "0",
                                "EFT_TOKEN_CACHE": "off", "EFT_CHECKPOINT_STEPS": "0",
                                "EFT_CHECKPOINT_SECONDS": "2.5", "EFT_TERMINATION_LOG": "/tmp/t"})
    assert (s.device, s.threads, s.train_workers, s.token_cache) == ("cuda:1", 3, 0, False)
    # a checkpoint every 0 steps would divide by zero: at least every step
    assert (s.checkpoint_steps, s.checkpoint_seconds, s.termination_log) == (1, 2.5, "/tmp/t")
    assert StageSettings(checkpoint_steps=0).checkpoint_steps == 1  # callers get the same floor
    v = ServeSettings.from_env({"EFT_SERVE_HOST": "127.0.0.1", "EFT_SERVE_PORT": "9000", "EFT_LOG_LEVEL": "debug",
                                "EFT_TRT_CACHE": "/cache"})
    assert v == ServeSettings(host="127.0.0.1", port=9000, log_level="debug", trt_cache="/cache")


def test_caller_options_are_not_variables():
    s = StageSettings.from_env({"EFT_STOP_AFTER_STEPS": "3", "EFT_SMOKE_TEST": "0"}, stop_after_steps=2)
    assert s.stop_after_steps == 2 and s.smoke_test is True


@pytest.mark.parametrize("name,value,kind", [("EFT_THREADS", "two", "an integer"),
                                             ("EFT_CHECKPOINT_SECONDS", "10m", "a number"),
                                             ("EFT_SERVE_PORT", "80.5", "an integer")])
def test_malformed_values_name_the_variable(name, value, kind):
    with pytest.raises(SettingsError) as ei:
        (ServeSettings if "SERVE" in name else StageSettings).from_env({name: value})
    assert str(ei.value) == f"${name} must be {kind}, got {value!r}"


def test_eft_cli_reports_a_malformed_variable_in_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: eft.ai/v1alpha1\nkind: EmbeddingFinetune\nmetadata: {name: s}\nspec: {}\n")
    r = subprocess.run([sys.executable, "-m", "eft.cli", "stage", "ingest", "--spec", str(spec), "--workspace",
                        str(tmp_path / "ws")], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "EFT_CHECKPOINT_STEPS": "many", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: $EFT_CHECKPOINT_STEPS must be an integer, got 'many'"
    assert "Traceback" not in r.stderr


def test_no_module_reads_eft_variables_outside_the_settings_modules():
    offenders = []
    for root in ("eft", "stages", "operator"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path in SETTINGS_MODULES:
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if ENV_READ.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_log_level_uvicorn_would_refuse_is_refused_first():
    with pytest.raises(SettingsError) as ei:
        ServeSettings.from_env({"EFT_LOG_LEVEL": "loud"})
    assert str(ei.value) == "$EFT_LOG_LEVEL must be one of debug, info, warning, error, got 'loud'"


def test_every_variable_is_documented():
    source = (REPO / "eft" / "settings.py").read_text(encoding="utf-8")
    doc = (REPO / "docs" / "stage-contract.md").read_text(encoding="utf-8")
    names = set(re.findall(r"\$(EFT_[A-Z_]+)", source))
    assert len(names) >= 10
    assert not sorted(n for n in names if f"`{n}`" not in doc)
