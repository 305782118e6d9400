"""Operator settings: the environment is read in one place (Settings.from_env); CLI flags override it."""


from __future__ import annotations

import os

import pytest

from eft.controller.main import build_parser, settings_from_args
from eft.controller.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("EFT_"):
            monkeypatch.delenv(k)


def _settings(*argv):
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_namespaces_come_from_the_environment(monkeypatch):
    assert Settings.from_env().namespaces == ()
    monkeypatch.setenv("EFT_NAMESPACES", " ml, team-a ,,")
    assert Settings.from_env().namespaces == ("ml", "team-a")
    assert _settings().namespaces == ("ml", "team-a")


def test_namespace_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("EFT_NAMESPACES", "ml")
    assert _settings("-n", "a", "--namespace", "b").namespaces == ("a", "b")
    assert _settings("-A").namespaces == ()  # every namespace, whatever the environment says
    assert _settings("-A", "-n", "a").namespaces == ()


def test_flags_override_the_environment_and_unset_flags_do_not(monkeypatch):
    monkeypatch.setenv("EFT_IMAGE", "env/stages:1")
    monkeypatch.setenv("EFT_WORKERS", "7")
    s = _settings("--workers", "2")
    assert (s.image, s.workers) == ("env/stages:1", 2)
    assert _settings("--image", "cli/stages:2").image == "cli/stages:2"


def test_malformed_json_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("EFT_DEFAULT_TOLERATIONS", "{not json")
    with pytest.raises(ValueError, match=r"\$EFT_DEFAULT_TOLERATIONS is not valid JSON"):
        Settings.from_env()
    monkeypatch.setenv("EFT_DEFAULT_TOLERATIONS", "{}")
    with pytest.raises(ValueError, match="must be a JSON list"):
        Settings.from_env()
