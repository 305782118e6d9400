"""The example specs are accepted by the API server under the generated CRD, which fills in the same
defaults as the spec model."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.unit.deploy.test_examples import CRD, EXAMPLES, IDS

# --------------------------------------------------------------------------- API server


@pytest.fixture(scope="module")
def crd_applied(control_plane):
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=eft-examples-test",
                          "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/embeddingfinetunes.eft.ai",
                          "--timeout=60s")
    return True


@pytest.mark.kube
@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_accepted_by_the_api_server(control_plane, crd_applied, kube_namespace, path):
    doc = yaml.safe_load(path.read_text())
    doc["metadata"].pop("namespace", None)
    proc = control_plane.kubectl("create", "--dry-run=server", "-o", "json", "-n", kube_namespace, "-f", "-",
                                 input=json.dumps(doc))
    stored = json.loads(proc.stdout)
    assert stored["metadata"]["namespace"] == kube_namespace
    # the CRD's structural schema filled in the defaults the file leaves out, as the spec model does
    from eft.spec import parse_document

    model = parse_document(doc).spec
    for block in ("mining", "split"):  # an unset field with no default (split.test) is left out by both
        assert stored["spec"][block] == getattr(model, block).model_dump(mode="json", by_alias=True,
                                                                        exclude_none=True), block
    assert stored["spec"]["workspace"]["size"]
