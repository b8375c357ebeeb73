"""deploy/ and the Grafana provisioning: the files parse, agree with each other (image, ports, paths,
service discovery), the Ray launcher config passes Ray's own schema, promtool accepts the scrape config."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
IMAGE = "hybrid-es:0.1.0"
API_PORT = 8000
GCS_PORT = 6379


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load(COMPOSE_FILE)


def default_of(value: str) -> str:
    """A compose value with ${VAR:-default} interpolations replaced by their defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def from_compose(relative: str) -> Path:
    return (COMPOSE_FILE.parent / relative).resolve()


def volumes(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source (named volume, or a host path resolved against the compose file)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = str(from_compose(source)) if source.startswith(".") else source
    return out


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def pinned(package: str) -> str:
    match = re.search(rf"^{package}==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert match, f"{package} is not pinned in constraints.txt"
    return match.group(1)


def test_dockerfile_builds_the_service_image_from_the_constraints() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "pip install -c constraints.txt ." in runs
    copied = [shlex.split(args)[:-1] for op, args in steps if op == "COPY"]
    sources = [s for srcs in copied for s in srcs if not s.startswith("--")]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert set(sources) >= {"pyproject.toml", "constraints.txt", "workers", "coordinator", "service"}
    assert ("ENTRYPOINT", '["hes-entrypoint"]') in steps
    assert ("EXPOSE", str(API_PORT)) in steps
    ignore = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*"  # the context is the repository root: send only what the image needs
    kept = {i.removeprefix("!").rstrip("/") for i in ignore if i.startswith("!")}
    assert set(sources) <= kept, f"the build context leaves out {set(sources) - kept}"


def fake_bin(folder: Path, name: str) -> None:
    """A command that appends its name and arguments to folder/calls."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{folder}/calls"\n')
    path.chmod(0o755)


def run_entrypoint(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    for name in ("ray", "hes"):
        fake_bin(tmp_path, name)
    proc = subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "--port", "9000"], capture_output=True,
                          text=True, env={"PATH": f"{tmp_path}:{os.environ['PATH']}", **env}, timeout=30)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return proc, calls


def test_entrypoint_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    proc, calls = run_entrypoint(tmp_path)
    assert proc.returncode != 0 and "HES_API_TOKEN must be set" in proc.stderr
    assert calls == []


def test_entrypoint_joins_ray_then_serves_on_all_interfaces(tmp_path: Path) -> None:
    proc, calls = run_entrypoint(tmp_path, HES_API_TOKEN="t", HES_RAY_ADDRESS=f"ray-head:{GCS_PORT}")
    assert proc.returncode == 0, proc.stderr
    assert calls == [f"ray start --address=ray-head:{GCS_PORT} --num-cpus=0 --metrics-export-port=8080",
                     "hes serve --host 0.0.0.0 --port 9000"]
    (tmp_path / "calls").unlink()
    assert run_entrypoint(tmp_path, HES_API_TOKEN="t")[1] == ["hes serve --host 0.0.0.0 --port 9000"]


def test_compose_stack_wires_ray_service_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert set(services) == {"ray-head", "ray-worker", "api", "prometheus", "grafana"}
    for name in ("ray-head", "ray-worker", "api"):
        s = services[name]
        assert default_of(s["image"]) == IMAGE
        assert from_compose(s["build"]["context"]) == ROOT and (ROOT / s["build"]["dockerfile"]).is_file()
    head = services["ray-head"]["entrypoint"]
    assert head[:3] == ["ray", "start", "--head"] and f"--port={GCS_PORT}" in head and "--block" in head
    worker = services["ray-worker"]
    assert f"--address=ray-head:{GCS_PORT}" in worker["entrypoint"] and "--block" in worker["entrypoint"]
    assert worker["deploy"]["replicas"] >= 1  # `docker compose up --scale ray-worker=N` changes it
    api = services["api"]
    env = api["environment"]
    assert env["HES_RAY_ADDRESS"] == env["RAY_ADDRESS"] == f"ray-head:{GCS_PORT}"
    assert env["HES_API_TOKEN"].startswith("${HES_API_TOKEN:?")  # compose refuses to start without it
    assert f"127.0.0.1:{API_PORT}:{API_PORT}" in api["ports"]
    assert volumes(api)[env["HES_STATE_DIR"]] == "hes-state"
    assert "hes-state" in compose()["volumes"]


def test_prometheus_scrapes_the_service_and_rays_discovery_file() -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    mounts = volumes(prom)
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert Path(mounts[config_path]) == DEPLOY / "prometheus" / "prometheus.yml"
    scrape = {j["job_name"]: j for j in load(Path(mounts[config_path]))["scrape_configs"]}
    assert scrape["hes"]["static_configs"][0]["targets"] == [f"api:{API_PORT}"]
    assert scrape["hes"]["metrics_path"] == "/metrics" and scrape["hes"]["honor_labels"] is True
    (sd_file,) = scrape["ray"]["file_sd_configs"][0]["files"]
    assert sd_file == "/tmp/ray/prom_metrics_service_discovery.json"  # where the Ray head writes it
    head_tmp = volumes(services["ray-head"])["/tmp/ray"]
    assert mounts["/tmp/ray"] == head_tmp and head_tmp in compose()["volumes"]  # same path: the file is a symlink
    assert "--metrics-export-port=8080" in services["ray-head"]["entrypoint"]


def test_grafana_mounts_provisioning_and_the_dashboard_folder() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = volumes(grafana)
    assert Path(mounts["/etc/grafana/provisioning"]) == ROOT / "dashboards" / "provisioning"
    (provider,) = load(ROOT / "dashboards" / "provisioning" / "dashboards" / "hes.yml")["providers"]
    assert Path(mounts[provider["options"]["path"]]) == ROOT / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "dashboards" / Path(home).relative_to(provider["options"]["path"])).is_file()
    (source,) = load(ROOT / "dashboards" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in compose()["services"]["prometheus"]["ports"]


def test_promtool_accepts_the_shipped_scrape_config() -> None:
    if not shutil.which("promtool"):
        pytest.skip("no promtool (Debian package `prometheus`; .ci/run installs it)")
    proc = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_promtool_reads_a_ray_discovery_file(tmp_path: Path) -> None:
    """The file_sd job accepts the file as a Ray head writes it: a symlink into its session folder to
    JSON of this shape (ray._private.metrics_agent.PrometheusServiceDiscoveryWriter)."""
    if not shutil.which("promtool"):
        pytest.skip("no promtool (Debian package `prometheus`; .ci/run installs it)")
    session = tmp_path / "session_latest" / "prom_metrics_service_discovery.json"
    session.parent.mkdir()
    session.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["10.0.0.2:8080", "10.0.0.3:8080"]}]))
    sd = tmp_path / "prom_metrics_service_discovery.json"
    sd.symlink_to(session)
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace(
        "/tmp/ray/prom_metrics_service_discovery.json", str(sd))
    (tmp_path / "prometheus.yml").write_text(config)
    ok = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "WARNING" not in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    session.write_text(json.dumps([{"targets": "10.0.0.2:8080"}]))
    bad = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0


def test_ray_launcher_config_passes_rays_schema_and_scales() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(DEPLOY / "ray" / "cluster.yaml")
    config = prepare_config(raw)
    validate_config(config)
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"] == {"CPU": 0}
    assert types and all(t["max_workers"] > t["min_workers"] for t in types.values())
    assert raw["max_workers"] >= max(t["max_workers"] for t in types.values())
    assert raw["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-cpu" == \
        f"rayproject/ray:{pinned('ray')}-py311-cpu"
    (mount,) = raw["file_mounts"].items()
    assert mount[1] == "." and any(f"-c {mount[0]}/constraints.txt {mount[0]}" in c for c in raw["setup_commands"])
    assert any(f"--port={GCS_PORT}" in c and "--metrics-export-port" in c for c in raw["head_start_ray_commands"])
    assert any(f"$RAY_HEAD_IP:{GCS_PORT}" in c for c in raw["worker_start_ray_commands"])


def test_ray_launcher_schema_rejects_a_misspelled_key() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(DEPLOY / "ray" / "cluster.yaml")
    raw["available_node_types"]["ray.worker.cpu"]["max_worker"] = 3
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(raw))


def kuberay() -> dict[str, dict[str, Any]]:
    """kind/name -> document, over every manifest the kustomization lists."""
    kustomization = load(DEPLOY / "kuberay" / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (DEPLOY / "kuberay").glob("*.yaml") if p.name != "kustomization.yaml")
    docs = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "kuberay" / name).read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_raycluster_has_a_scalable_worker_group_on_the_service_image() -> None:
    cluster = kuberay()["RayCluster/hybrid-es"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__ == pinned("ray")
    assert spec["enableInTreeAutoscaling"] is True
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == IMAGE
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head_ports = {p["containerPort"] for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {GCS_PORT, 8265, 8080} <= head_ports
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"]


def test_api_deployment_and_service() -> None:
    docs = kuberay()
    deployment, service = docs["Deployment/hybrid-es-api"], docs["Service/hybrid-es-api"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    env = {e["name"]: e for e in container["env"]}
    head_service = f"{docs['RayCluster/hybrid-es']['metadata']['name']}-head-svc"  # KubeRay's naming
    assert env["HES_RAY_ADDRESS"]["value"] == env["RAY_ADDRESS"]["value"] == f"{head_service}:{GCS_PORT}"
    assert env["HES_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == API_PORT
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == env["HES_STATE_DIR"]["value"]
    claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "state")["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in docs
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "http", "port": API_PORT, "targetPort": "http"}]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(API_PORT)
