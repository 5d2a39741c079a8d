"""deploy/k8s: rendered with kustomize (kubectl's), validated offline against the Kubernetes
schemas (kubernetes-validate), never exposing the dashboard or the proxy without a login, and
its Jobs' commands run for real against PostgreSQL through the proxy."""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import FINISHED, REPO, cli, trials_of, write_study

from carbrand_search.core.network import is_loopback

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32"  # the schemas checked against (kubectl's own version here)
COMPONENTS = {
    "base": [],
    "proxy": ["proxy"],
    "external-db": ["external-db"],
    "all": ["proxy", "external-db"],
}

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="kubectl (for `kubectl kustomize`) is not installed; CI requires it",
)


def render(tmp_path: Path, components: list[str]) -> list[dict[str, Any]]:
    """The manifests `kubectl kustomize` makes of deploy/k8s plus `components`, with the
    example secrets (as a user would after `cp secrets.env.example secrets.env`)."""
    copy = tmp_path / "k8s"
    if not copy.exists():
        shutil.copytree(K8S, copy)
        shutil.copy(copy / "secrets.env.example", copy / "secrets.env")
    top = tmp_path / f"with-{'-'.join(components) or 'nothing'}"
    top.mkdir(exist_ok=True)
    (top / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../k8s"],
                "components": [f"../k8s/components/{c}" for c in components],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(top)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(manifest, container) for every container of every workload."""
    found = []
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        found += [(doc, c) for c in spec.get("containers", [])]
    return found


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def exposures(docs: list[dict[str, Any]]) -> list[str]:
    """What in the manifests could be reached without a login beyond loopback (empty: none)."""
    problems = []
    for doc, container in containers(docs):
        command = container.get("command", [])
        where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
        secret_env = {
            e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
        }
        local = is_loopback(option(command, "--host") or "127.0.0.1")
        if command[:2] == ["carbrand-search", "dashboard"] and not local:
            problems.append(f"{where}: the dashboard listens beyond loopback")
        no_token = "CARBRAND_PROXY_TOKEN" not in secret_env
        if command[:2] == ["carbrand-search", "proxy"] and not local and no_token:
            problems.append(f"{where}: the proxy listens beyond loopback with no token")
        if container.get("image", "").startswith("caddy"):
            script = " ".join(command)
            if "DASHBOARD_USER" not in script or "exit 2" not in script:
                problems.append(f"{where}: the login does not fail closed")
    for doc in docs:
        if doc["kind"] == "Service" and doc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service/{doc['metadata']['name']}: {doc['spec']['type']}")
    return problems


@pytest.mark.parametrize("variant", sorted(COMPONENTS))
def test_manifests_render_and_validate(tmp_path: Path, variant: str) -> None:
    docs = render(tmp_path, COMPONENTS[variant])
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Job", "carbrand-create") in kinds and ("Job", "carbrand-worker") in kinds
    assert (("StatefulSet", "postgres") in kinds) == ("external-db" not in COMPONENTS[variant])
    assert (("Deployment", "storage-proxy") in kinds) == ("proxy" in COMPONENTS[variant])
    worker = next(d for d in docs if d["metadata"]["name"] == "carbrand-worker")
    assert worker["spec"]["parallelism"] >= 1
    limits = worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    storage = {
        e["name"]: e.get("value")
        for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]
    }["CARBRAND_STORAGE"]
    assert (storage == "grpc://storage-proxy:13000") == ("proxy" in COMPONENTS[variant])


def test_a_broken_manifest_fails_validation(tmp_path: Path) -> None:
    worker = next(d for d in render(tmp_path, []) if d["metadata"]["name"] == "carbrand-worker")
    worker["spec"]["parallelism"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)


def test_nothing_shipped_is_reachable_without_a_login(tmp_path: Path) -> None:
    docs = render(tmp_path, ["proxy"])
    assert exposures(docs) == []
    caddyfile = (K8S / "Caddyfile").read_text()
    assert "basic_auth" in caddyfile and "reverse_proxy 127.0.0.1:8080" in caddyfile
    # The check itself finds what it is for.
    for _, container in containers(docs):
        command = container.get("command", [])
        if command[:2] == ["carbrand-search", "dashboard"]:
            container["command"] = ["carbrand-search", "dashboard", "--host", "0.0.0.0"]
        if command[:2] == ["carbrand-search", "proxy"]:
            container["env"] = [e for e in container["env"] if e["name"] != "CARBRAND_PROXY_TOKEN"]
    assert len(exposures(docs)) == 2
    # Compose: PostgreSQL and the dashboard published on loopback only; the login fails closed.
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert compose["dashboard"]["ports"] == ["127.0.0.1:${DASHBOARD_PORT:-8080}:8080"]
    assert compose["postgres"]["ports"][0].startswith("${POSTGRES_BIND:-127.0.0.1}:")
    assert "exit 2" in " ".join(compose["proxy"]["command"])
    assert "basic_auth" in (REPO / "deploy" / "Caddyfile").read_text()
    # No example secret is a usable one.
    example = (K8S / "secrets.env.example").read_text()
    assert re.search(r"^(postgres-password|proxy-token|dashboard-user)=$", example, re.M)


@pytest.mark.slow
@pytest.mark.postgres
def test_the_jobs_commands_run_a_study_through_the_proxy(
    tmp_path: Path, demo_root: Path, proxied: str
) -> None:
    docs = render(tmp_path, ["proxy"])
    settings = next(d for d in docs if d["metadata"]["name"].startswith("carbrand-settings"))
    studies = tmp_path / "studies"
    studies.mkdir()
    write_study(studies, n_trials=2, epochs=2)
    values = settings["data"] | {"STUDY": "tiny", "HEARTBEAT": "1"}
    env = {
        **os.environ, "CARBRAND_STORAGE": proxied, "CARBRAND_DATA": str(demo_root),
        "CARBRAND_ARTIFACTS": str(tmp_path / "artifacts"), "CARBRAND_STUDIES": str(studies),
    }  # fmt: skip
    for name in ("carbrand-create", "carbrand-worker"):
        job = next(d for d in docs if d["metadata"]["name"] == name)
        container = job["spec"]["template"]["spec"]["containers"][0]
        storage = next(e for e in container["env"] if e["name"] == "CARBRAND_STORAGE")
        assert storage["value"].startswith("grpc://")  # here: the test's own proxy instead
        command = [
            re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], w) for w in container["command"]
        ]
        assert command[0] == "carbrand-search"
        done = subprocess.run(
            cli(*command[1:]), env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert sum(t.state in FINISHED for t in trials_of(proxied)) == 2
