"""The cluster configs in cluster/: valid for Ray's launcher and KubeRay, locked down (token auth, dashboard off the
network), on shared storage, consistent with the image and the sweep CLI. (tests/test_secrets.py scans every file of
the repository for secrets.)

Offline: Ray's own schema check for the launcher configs, plain YAML reads for the rest; no cloud, no Kubernetes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
STORAGE_PATH = "/mnt/dbae/runs"  # DBAE_STORAGE_PATH on every node
SHARED_MOUNT = str(PurePosixPath(STORAGE_PATH).parent)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _ray_starts(cfg: dict) -> list[str]:
    return [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]


def test_cluster_folder_has_every_config():
    # The parametrized tests below would pass vacuously over an empty glob.
    assert {p.name for p in LAUNCHER_CONFIGS} >= {"aws.yaml", "gcp.yaml", "onprem.yaml"}
    assert {p.name for p in KUBERAY_FILES} >= {"raycluster.yaml", "rayjob.yaml", "pvc.yaml"}
    assert DOCKERFILE.is_file() and (CLUSTER / "README.md").is_file()


# -- Ray cluster launcher configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_validation(path):
    validate_config(prepare_config(_load(path)))  # what `ray up` runs first: schema, node types, worker counts


def test_launcher_validation_rejects_a_misspelt_key():
    # Proof that the check above has teeth: an unknown node-type key is a schema error.
    cfg = _load(CLUSTER / "aws.yaml")
    cfg["available_node_types"]["gpu"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cfg))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_starts_ray_locked_down(path):
    cfg = _load(path)
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    starts = _ray_starts(cfg)
    assert len(head) == 1 and len(starts) == 2
    assert "--dashboard-host=127.0.0.1" in head[0]  # the job API runs code: reachable only through a tunnel
    for command in starts:
        # The variables prefix the `ray start` itself: Ray hands its environment to drivers and trials.
        env = command[:command.index("ray start")]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", env), command
        assert f"DBAE_STORAGE_PATH={STORAGE_PATH}" in env.split(), command
        assert re.search(r"\bMLFLOW_TRACKING_URI=https?://\S+", env), command
        assert "0.0.0.0" not in command
    # Every node and client needs the same token; it travels from the launching machine, not from the repository.
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_installs_the_project_on_shared_storage(path):
    cfg = _load(path)
    project = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    setup = "\n".join(cfg["setup_commands"] + cfg.get("head_setup_commands", []) + cfg.get("worker_setup_commands", []))
    assert f"-c {project}/constraints.txt torch torchvision" in setup  # the pinned pair first, as the Makefile does
    assert f"-c {project}/constraints.txt -e {project}" in setup      # then the project from its own pyproject.toml
    assert f'"ray[default,tune,train]=={ray.__version__}"' in setup    # the cluster runs the client's Ray
    assert re.search(rf"\bmount\b.*\s{re.escape(SHARED_MOUNT)}\)", setup), "no shared filesystem mounted"
    assert f"mkdir -p {STORAGE_PATH}" in setup


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_ships_no_local_state(path):
    patterns = _load(path)["rsync_exclude"]
    assert {".git", ".venv"} <= set(patterns)
    assert {"/runs/", "/data/", "/mlruns/"} <= set(patterns)
    # Anchored only: an unanchored `data` would also drop dbae_core/data/, which is source code.
    assert not [p for p in patterns if p.strip("/") in ("data", "runs") and not p.startswith("/")]
    assert (ROOT / "dbae_core" / "data").is_dir()


def _uploaded(tree: Path, excludes: list[str]) -> set[str]:
    """What `ray job submit --working-dir TREE` would upload: Ray's own walk over the tree, with its ignore files."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes
    files: set[str] = set()
    walk = [_get_excludes(tree, excludes)] if excludes else []
    _dir_travel(tree, walk, lambda p: files.add(p.relative_to(tree).as_posix()) if p.is_file() else None,
                include_gitignore=False)  # the worst case: RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1
    return files


@pytest.mark.parametrize("excludes", ["rayignore only", "runtime_env.yaml"])
def test_job_upload_leaves_out_git_runs_data_and_the_venv_but_keeps_all_source(tmp_path, excludes):
    (tmp_path / ".rayignore").write_text((ROOT / ".rayignore").read_text())
    source = ["dbae_core/__init__.py", "dbae_core/data/__init__.py", "dbae_core/data/shapes.py",
              "dbae_platform/train.py", "sweeps/latent_dim.py", "configs/tiny.yaml"]
    local = [".git/index", ".git/objects/ab/cdef", ".git/logs/HEAD", ".venv/bin/python", "runs/mlflow.db",
             "runs/demo/checkpoint_1/state.pt", "data/x.parquet", "mlruns/0/meta.yaml", "model.pt"]
    commit = "0123456789abcdef0123456789abcdef01234567"  # pragma: allowlist secret
    provenance = {".git/HEAD": "ref: refs/heads/main\n", ".git/refs/heads/main": commit + "\n"}
    for name in source + local:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    for name, text in provenance.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    listed = yaml.safe_load((ROOT / "sweeps" / "runtime_env.yaml").read_text())["excludes"]
    uploaded = _uploaded(tmp_path, listed if excludes == "runtime_env.yaml" else [])
    assert set(source) <= uploaded  # dbae_core/data/ is source, not data
    assert not uploaded & set(local), uploaded & set(local)
    assert set(provenance) <= uploaded  # HEAD and the refs travel: the job records the commit without git's objects

    # What the job's driver sees on the cluster: HEAD and refs without objects, so git cannot answer; the commit is
    # read from the files (loose ref, then packed-refs).
    from dbae_platform.tracking import git_commit
    job = tmp_path / "job"
    for name, text in provenance.items():
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_text(text)
    assert git_commit(job) == commit
    (job / ".git" / "refs" / "heads" / "main").unlink()
    (job / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    assert git_commit(job) == commit


def test_onprem_config_lists_its_machines():
    local = [(p, _load(p)) for p in LAUNCHER_CONFIGS if _load(p)["provider"]["type"] == "local"]
    assert local
    for path, cfg in local:
        provider = cfg["provider"]
        assert provider["head_ip"] and provider["worker_ips"], path.name
        assert cfg["min_workers"] == cfg["max_workers"] == len(provider["worker_ips"]), path.name
        key = cfg["auth"]["ssh_private_key"]
        assert key.startswith(("~/", "/")) and "\n" not in key, "ssh_private_key must be a path"


# -- Docker image and KubeRay manifests ---------------------------------------------------------------------------

def _documented_image() -> str:
    m = re.search(r"docker build -f cluster/docker/Dockerfile -t (\S+) \.", DOCKERFILE.read_text())
    assert m, "the Dockerfile must document its build command and tag"
    return m.group(1)


def _workdir() -> str:
    return re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)


def _kuberay_docs() -> list[dict]:
    return [doc for path in KUBERAY_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for doc in _kuberay_docs():
        if doc["kind"] == "RayCluster":
            specs.append(("RayCluster", doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append(("RayJob", doc["spec"]["rayClusterSpec"]))
    return specs


def _pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_dockerfile_builds_the_project_on_the_clients_ray():
    text = DOCKERFILE.read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-py3\d+-gpu$", text, re.M)
    assert "-c constraints.txt torch torchvision" in text and "-c constraints.txt -e ." in text
    assert _workdir().startswith("/") and _documented_image().count(":") == 1  # a tag, not :latest by default
    ignored = (CLUSTER / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "data", "mlruns"} <= set(ignored)


def test_kuberay_manifests_are_what_the_operator_expects():
    docs = _kuberay_docs()
    assert {d["kind"] for d in docs} == {"RayCluster", "RayJob", "PersistentVolumeClaim"}
    for doc in docs:
        assert doc["metadata"]["name"]
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1"


@pytest.mark.parametrize("kind,spec", _ray_cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_cluster_is_locked_down_and_on_shared_storage(kind, spec):
    assert spec["rayVersion"] == ray.__version__  # the image's Ray; token auth needs >= 2.52
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    if kind == "RayCluster":
        assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"  # kubectl port-forward reaches loopback
    else:
        # The operator polls a RayJob through the head Service, so its dashboard binds the pod network: it must stay
        # a ClusterIP Service (inside Kubernetes only), with the token required.
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    for group in [head, *spec["workerGroupSpecs"]]:
        # KubeRay takes rayStartParams as strings only: an unquoted 0 in YAML is rejected.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())

    claim = next(d for d in _kuberay_docs() if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]
    image = _documented_image()
    for pod in _pod_specs(spec):
        volumes = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
        for container in pod["containers"]:
            assert container["image"] == image, container["name"]
            env = {e["name"]: e for e in container["env"]}
            assert env["DBAE_STORAGE_PATH"]["value"] == STORAGE_PATH
            assert re.match(r"https?://\S+$", env["MLFLOW_TRACKING_URI"]["value"])
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get(SHARED_MOUNT) in volumes, f"{container['name']}: no shared claim at {SHARED_MOUNT}"

    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        for container in group["template"]["spec"]["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def _gpu_presets() -> list[str]:
    from dbae_platform.config import load_config
    return [p.stem for p in sorted((ROOT / "configs").glob("*.yaml")) if load_config(p.stem).resources.use_gpu]


@pytest.mark.parametrize("preset", _gpu_presets())
@pytest.mark.parametrize("kind,spec", _ray_cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_gpu_preset_fits_the_kuberay_worker_pods(kind, spec, preset):
    """A Ray worker of a GPU preset must fit one worker pod (or it waits forever), and a trial's workers must fit the
    group's maximum size; the manifests' comments state the preset's numbers."""
    from dbae_platform.config import load_config
    r = load_config(preset).resources
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert r.cpus_per_worker <= float(limits["cpu"]), (preset, group["groupName"], limits)
        assert r.gpus_per_worker <= int(limits.get("nvidia.com/gpu", 0)), (preset, group["groupName"])
        assert r.num_workers <= group["maxReplicas"] * int(float(limits["cpu"]) // r.cpus_per_worker)
    path = next(p for p in KUBERAY_FILES if f"kind: {kind}" in p.read_text())
    said = re.findall(r"(\d+) CPUs \+ (\d+) GPU per Ray worker", path.read_text())
    assert said and all((float(c), float(g)) == (r.cpus_per_worker, r.gpus_per_worker) for c, g in said), said


def test_kuberay_shared_claim_is_read_write_many():
    claim = next(d for d in _kuberay_docs() if d["kind"] == "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"] and claim["spec"]["storageClassName"]


def test_rayjob_runs_the_latent_dim_sweep_on_the_gpu_workers():
    from dbae_platform.cli.sweep import add_study_flags
    from dbae_platform.config import load_config

    job = next(d for d in _kuberay_docs() if d["kind"] == "RayJob")["spec"]
    assert job["submissionMode"] == "K8sJobMode" and job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int) and isinstance(job["backoffLimit"], int)
    python, script, *flags = job["entrypoint"].split()
    assert python == "python"
    script = PurePosixPath(script)
    if script.is_absolute():  # the image's WORKDIR holds the project
        script = script.relative_to(_workdir())
    assert str(script) == "sweeps/latent_dim.py" and (ROOT / script).is_file()

    parser = argparse.ArgumentParser()
    add_study_flags(parser)
    args = parser.parse_args(flags)  # the flags exist in the sweep CLI
    assert str(args.storage_path) == STORAGE_PATH
    assert args.resume or job["backoffLimit"] == 0, "a retried job without --resume refuses the existing sweep"
    # Each trial must fit one pod of the GPU group, or it waits forever.
    resources = load_config(args.preset or "tiny").resources
    limits = job["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert resources.use_gpu and resources.gpus_per_worker <= int(limits["nvidia.com/gpu"])
    assert resources.cpus_per_worker <= float(limits["cpu"])
