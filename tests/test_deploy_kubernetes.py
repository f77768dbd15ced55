"""The Kubernetes manifests in deploy/kubernetes: valid for the API server, and consistent with the server.

The schemas are the ones the kubernetes-validate package ships (no network).
Beyond the schema, each check is a mistake that would pass `kubectl apply` and
still leave a broken deployment: a probe on a path the server does not serve
publicly, a Service that selects no pod, a store mounted where the server
does not look, a variable the server does not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ollama_py import settings
from ollama_py.server.app import ROUTES, bind_address
from ollama_py.server.middleware import Scope

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
# The oldest Kubernetes still commonly run, and the newest the package knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_the_api_server(version: str) -> None:
    kinds = set()
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown (misspelt) field fails
        kinds.add(doc["kind"])
    assert kinds == {"Deployment", "Service", "PersistentVolumeClaim", "Ingress"}


def test_the_pods_serve_what_the_probes_service_and_scraper_expect() -> None:
    deployment, service = by_kind("Deployment"), by_kind("Service")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) - {"HOME"} <= set(settings.describe())  # only variables the server reads
    _, port = bind_address(env["OLLAMA_HOST"]["value"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port

    public = {r.path for r in ROUTES if r.method == "GET" and r.scope is Scope.PUBLIC}
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["path"] in public and probe["httpGet"]["port"] == "http"  # no key needed

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert any(r.path == annotations["prometheus.io/path"] for r in ROUTES if r.method == "GET")

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_the_store_is_the_shared_volume() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[env["OLLAMA_MODELS"]]]["persistentVolumeClaim"]["claimName"]
    pvc = by_kind("PersistentVolumeClaim")
    assert claim == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica mounts it at once
    # The root filesystem is read-only: everything the server writes is on a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {env["OLLAMA_MODELS"], env["OLLAMA_PY_CACHE"], env["HOME"]} <= set(mounts)


def test_the_ingress_keeps_conversations_on_a_replica_and_streams() -> None:
    ingress = by_kind("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert "$http_x_session_id" in notes["nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == by_kind("Service")["metadata"]["name"]
