"""Every stage module meets the stage contract (docs/stage-contract.md) by its shape: what the runner and the
`eft run` report look up on it are functions with the documented parameters."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from eft.pipeline import load_stage_module
from eft.spec import STAGES
from eft.stage_defs import STAGE_DEFS

OPTIONAL = {"report": ["stage_dir"], "input_fingerprint": ["spec"]}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_module_exposes_the_contract_functions(stage):
    mod = load_stage_module(stage)
    # after a run every submodule of a stage package is imported, and so an attribute of the package
    for sub in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        importlib.import_module(f"{mod.__name__}.{sub.name}")
    assert mod.__name__ == STAGE_DEFS[stage].module
    assert inspect.isfunction(mod.run), f"{mod.__name__}.run is not a function"
    assert list(inspect.signature(mod.run).parameters) == ["ctx"]
    for name, params in OPTIONAL.items():
        if hasattr(mod, name):
            fn = getattr(mod, name)
            # a package's submodule of the same name would shadow the function (`eft run` would call a module)
            assert inspect.isfunction(fn), f"{mod.__name__}.{name} is {type(fn).__name__}, not a function"
            assert list(inspect.signature(fn).parameters)[:len(params)] == params, (stage, name)


def test_the_stages_that_report_after_eft_run():
    assert [s for s in STAGES if inspect.isfunction(getattr(load_stage_module(s), "report", None))] == [
        "evaluate", "export"]
