"""The Argo CD health check (gitops/argocd/health.lua) run by a real Lua 5.1 interpreter (lupa), as Argo
CD runs it: the live object as the global table `obj`, the script's return value `hs` read back.

Argo CD uses gopher-lua (Lua 5.1) with only the safe standard libraries opened; the runtime here
drops os, io, require, load* and friends before running the script, so a script relying on them fails.
The example objects carry the status the operator writes (operator/plan.py's phases, operator/conditions.py's conditions).
"""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.support.paths import REPO  # noqa: E402

LUA = REPO / "gitops" / "argocd" / "health.lua"
CM = REPO / "gitops" / "argocd" / "argocd-cm.yaml"
CM_KEY = "resource.customizations.health.eft.ai_EmbeddingFinetune"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

lupa = pytest.importorskip("lupa", reason="lupa (test extra) runs the Lua health check")


def _runtime():
    try:
        from lupa import lua51 as impl  # Argo CD's gopher-lua implements Lua 5.1
    except ImportError:  # pragma: no cover - lupa wheels without the 5.1 runtime
        from lupa import LuaRuntime
        return LuaRuntime(unpack_returned_tuples=True)
    return impl.LuaRuntime(unpack_returned_tuples=True)


def run_health(obj: dict) -> dict:
    lua = _runtime()
    g = lua.globals()
    for unsafe in ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "module", "package",
                   "debug", "collectgarbage"):
        g[unsafe] = None
    g.obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    hs = lua.execute(LUA.read_text())
    assert hs is not None, "the script must return hs"
    out = dict(hs)
    assert set(out) <= {"status", "message"}, out
    assert out["status"] in ARGO_STATUSES
    assert isinstance(out.get("message"), str) and out["message"]
    return out


def efr(generation: int = 1, status: dict | None = None, suspend: bool | None = None) -> dict:
    obj = {
        "apiVersion": "eft.ai/v1alpha1",
        "kind": "EmbeddingFinetune",
        "metadata": {"name": "hw-docs", "namespace": "ml", "generation": generation, "uid": "0e6c"},
        "spec": {"baseModel": {"name": "bundled"}, "sdg": {"backend": "offline"}},
    }
    if suspend is not None:
        obj["spec"]["suspend"] = suspend
    if status is not None:
        obj["status"] = status
    return obj


def conditions(**states: tuple[str, str, str] | str) -> list[dict]:
    """type -> (status, reason, message); every type of operator/conditions.py, 'False' when not given."""
    from eft.controller.plan import CONDITION_TYPES

    out = []
    for ctype in CONDITION_TYPES:
        st = states.get(ctype, ("False", "Default", ""))
        if isinstance(st, str):
            st = (st, "Reason", "")
        out.append({"type": ctype, "status": st[0], "reason": st[1], "message": st[2],
                    "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1})
    return out


def status(phase: str, message: str = "", observed: int = 1, **conds) -> dict:
    st = {"observedGeneration": observed, "phase": phase, "conditions": conditions(**conds)}
    if message:
        st["message"] = message
    return st


CASES = {
    "fresh, no status": (efr(), "Progressing", "Waiting for the eft operator"),
    "status without observedGeneration": (efr(status={"phase": "Running"}), "Progressing", "Waiting"),
    "spec edited, not observed yet": (
        efr(generation=3, status=status("Serving", "serving model abc", observed=2,
                                        Ready=("True", "ModelServing", "serving model abc"))),
        "Progressing", "generation 3"),
    "stage running": (
        efr(status=status("Running", "stage train running (Job hw-docs-train-1a2b)",
                          Progressing=("True", "StageRunning", "stage train running"))),
        "Progressing", "stage train running"),
    "queued for Kueue admission": (
        efr(status=status("Queued", "stage train: Job hw-docs-train is suspended, waiting for admission",
                          Progressing=("True", "Queued", "waiting"), Queued=("True", "WaitingForAdmission", "w"))),
        "Progressing", "waiting for admission"),
    "rolling out the model": (
        efr(status=status("Deploying", "rolling out model abc: 0/1 replicas ready",
                          Progressing=("True", "Deploying", "rolling out"),
                          Ready=("False", "Deploying", "rolling out"), Succeeded="True")),
        "Progressing", "0/1 replicas ready"),
    "serving": (
        efr(status=status("Serving", "serving model abc at http://hw-docs-serving.ml.svc:8000/v1",
                          Ready=("True", "ModelServing", "serving model abc at http://hw-docs-serving.ml.svc:8000/v1"),
                          Succeeded="True", QualityGatePassed="True")),
        "Healthy", "serving model abc"),
    "complete with serving disabled": (
        efr(status=status("Succeeded", "pipeline complete (serving disabled)",
                          Ready=("False", "ServingDisabled", "serving.enabled is false"),
                          Succeeded=("True", "PipelineCompleted", "every stage succeeded"))),
        "Healthy", "pipeline complete"),
    "stage failed": (
        efr(status=status("Failed", "stage sdg failed: LLM unreachable",
                          Failed=("True", "StageFailed", "stage sdg failed: LLM unreachable"))),
        "Degraded", "stage sdg failed"),
    "quality gate failed": (
        efr(status=status("Failed", "quality gate failed",
                          Failed=("True", "QualityGateFailed", "quality gate failed: ndcg@10: base 0.61, tuned 0.58"),
                          QualityGatePassed=("False", "BelowThreshold", "below"))),
        "Degraded", "tuned 0.58"),
    "invalid spec": (
        efr(status=status("Failed", "spec.training.nodes: needs ReadWriteMany",
                          Failed=("True", "InvalidSpec", "spec.corpus.path: field required"))),
        "Degraded", "spec.corpus.path"),
    "blocked by a conflicting object": (
        efr(status=status("Blocked", "Deployment hw-docs-serving exists and is not owned by this resource",
                          Progressing=("False", "ChildConflict", "conflict"))),
        "Degraded", "not owned"),
    "suspended between stages": (
        efr(suspend=True, status=status("Suspended", "suspended before stage train (spec.suspend)",
                                        Progressing=("False", "Suspended", "suspended"))),
        "Suspended", "suspended before stage train"),
    "suspend requested while a stage runs": (
        efr(suspend=True, status=status("Running", "stage prepare running (Job hw-docs-prepare-9f)",
                                        Progressing=("True", "StageRunning", "running"))),
        "Progressing", "pausing after this stage"),
    "suspend requested, not observed yet": (
        efr(generation=2, suspend=True, status=status("Running", "stage train running", observed=1,
                                                      Progressing="True")),
        "Progressing", "generation 2"),
    "suspended after completion is still healthy": (
        efr(suspend=True, status=status("Serving", "serving model abc",
                                        Ready=("True", "ModelServing", "serving model abc"), Succeeded="True")),
        "Healthy", "serving model abc"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_health(name):
    obj, want, fragment = CASES[name]
    hs = run_health(obj)
    assert hs["status"] == want, (name, hs)
    assert fragment in hs["message"], (name, hs)


def test_every_health_state_is_covered():
    assert {want for _, want, _ in CASES.values()} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_condition_types_exist_in_the_operator():
    """The script reads conditions Ready, Failed, Succeeded, Progressing: the operator writes them."""
    from eft.controller.plan import CONDITION_TYPES

    for ctype in ("Ready", "Failed", "Succeeded", "Progressing"):
        assert ctype in CONDITION_TYPES
        assert f'"{ctype}"' in LUA.read_text()


def test_runs_on_lua_5_1():
    lua = _runtime()
    assert lua.eval("_VERSION") == "Lua 5.1"


def test_argocd_cm_snippet_is_the_script():
    cm = yaml.safe_load(CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["metadata"]["namespace"] == "argocd"
    assert cm["data"][CM_KEY] == LUA.read_text()


def test_application_syncs_a_folder_of_specs():
    app = yaml.safe_load((REPO / "gitops" / "argocd" / "application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    src = app["spec"]["source"]
    folder = REPO / src["path"]
    specs = sorted(folder.glob(src["directory"]["include"]))
    assert specs, f"{folder} holds no spec"
    for p in specs:
        doc = yaml.safe_load(p.read_text())
        assert (doc["apiVersion"], doc["kind"]) == ("eft.ai/v1alpha1", "EmbeddingFinetune"), p
        assert "namespace" not in doc["metadata"], f"{p}: the Application's destination sets the namespace"
    assert app["spec"]["destination"]["namespace"]


def test_operator_application_points_at_the_chart():
    app = yaml.safe_load((REPO / "gitops" / "argocd" / "operator-application.yaml").read_text())
    assert (REPO / app["spec"]["source"]["path"] / "Chart.yaml").is_file()
