"""cluster.yaml as Ray's cluster launcher and the EC2 API read it, and the images it names as
docker/ builds them (docker/build-push.sh run end to end with a stand-in `docker`, which this
machine lacks)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
# AWS instance memory (GiB) and vCPUs of the types cluster.yaml names.
GIB = {"g5.xlarge": 16, "g5.2xlarge": 32, "g5.12xlarge": 192, "m5.2xlarge": 32}
VCPUS = {"g5.xlarge": 4, "g5.2xlarge": 8, "g5.12xlarge": 48, "m5.2xlarge": 8}


def _prepared(text: str | None = None) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(text if text is not None else (REPO / "cluster.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)  # Ray's own schema check of a cluster-launcher config
    return prepared


@pytest.fixture(scope="module")
def config() -> dict:
    return _prepared()


def _node_types(config: dict, head: bool) -> dict:
    return {n: t for n, t in config["available_node_types"].items() if (n == config["head_node_type"]) == head}


def test_ray_launcher_accepts_it(config):
    (head,) = _node_types(config, head=True).values()
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # the head runs no trials
    workers = _node_types(config, head=False).values()
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)


def test_every_node_config_is_a_valid_ec2_launch_request(config):
    """Ray passes a node type's node_config to EC2's RunInstances; botocore's validator checks it
    against the EC2 API model (Ray's schema leaves node_config free)."""
    import botocore.session
    from botocore.validate import ParamValidator

    run_instances = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    for name, node_type in config["available_node_types"].items():
        node_config = node_type["node_config"]
        report = ParamValidator().validate({**node_config, "MinCount": 1, "MaxCount": 1}, run_instances.input_shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        # An explicit image: the current GPU Deep Learning Base AMI of the launch region (or a pinned id).
        assert node_config["ImageId"] == f"resolve:ssm:{DLAMI_PARAMETER}" or node_config["ImageId"].startswith("ami-")
        assert node_config["InstanceType"] in GIB
    # Every worker type gets the workers' instance profile (Ray gives its default one to the head only).
    for name, node_type in _node_types(config, head=False).items():
        assert node_type["node_config"].get("IamInstanceProfile") == {"Name": "cxrsweep-worker"}, name
    (head,) = _node_types(config, head=True).values()
    assert head["node_config"].get("IamInstanceProfile") == {"Name": "cxrsweep-head"}


def test_memory_and_cpus_fit_the_instances(config):
    """Shared memory holds the object store: at least its size, well under any node's RAM. A worker
    declares its instance's vCPUs and holds the paper profile's packed trials (one CPU each) in its
    memory: per trial cluster.yaml's host RSS budget (2.5 GB, above the 1.55 GB measured for a packed
    paper U-Net trial), plus shm and ~2 GB for Ray and the system."""
    from protocol.config import GPUS_PER_TRIAL

    docker = config["docker"]
    shm = {}
    for kind in ("worker", "head"):
        (shm[kind],) = [int(o.split("=")[1].rstrip("g")) for o in docker[f"{kind}_run_options"]
                        if o.startswith("--shm-size=")]
        starts = " ".join(config[f"{kind}_start_ray_commands"])
        assert int(starts.split("--object-store-memory=")[1].split()[0]) / 1e9 <= shm[kind]
        for node_type in _node_types(config, head=kind == "head").values():
            assert shm[kind] <= GIB[node_type["node_config"]["InstanceType"]] / 4
    for node_type in _node_types(config, head=False).values():
        instance = node_type["node_config"]["InstanceType"]
        assert node_type["resources"]["CPU"] == VCPUS[instance]
        trials = round(1 / GPUS_PER_TRIAL["paper"]) * node_type["resources"]["GPU"]
        assert trials <= node_type["resources"]["CPU"]
        assert trials * 2.5 + shm["worker"] + 2 <= GIB[instance], instance


def test_nodes_install_nothing(config):
    """torch and cxrsweep are in the images: no setup command installs a package."""
    commands = [*config["setup_commands"], *config["head_setup_commands"], *config["worker_setup_commands"],
                *config["initialization_commands"]]
    assert not [c for c in commands if re.search(r"\b(pip|conda|apt(-get)?)\b.*\binstall\b", c)]
    assert config["file_mounts"] == {}


def _build_push(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """docker/build-push.sh with a stand-in `docker` first on PATH that logs each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "docker"
    stand_in.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$DOCKER_CALLS"\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_CALLS": str(tmp_path / "calls")}
    return subprocess.run(["bash", str(REPO / "docker" / "build-push.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_build_push_builds_the_images_cluster_yaml_names(tmp_path):
    import ray

    registry, tag = "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "v7"
    done = _build_push(tmp_path, registry, tag)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    builds = [c for c in calls if c.startswith("build ")]
    pushes = [c.split()[1] for c in calls if c.startswith("push ")]
    image = f"{registry}/cxrsweep"
    assert pushes == [f"{image}:{tag}-cpu", f"{image}:{tag}-gpu"]
    base = f"rayproject/ray:{ray.__version__}-py311"
    cpu, gpu = builds
    for build in builds:
        assert "--platform linux/amd64" in build and f"--file {REPO}/docker/Dockerfile" in build
        assert build.endswith(str(REPO))  # the repository is the build context
    assert f"--build-arg BASE_IMAGE={base}-cpu " in cpu and f"--tag {image}:{tag}-cpu" in cpu
    assert "TORCH_PIP_ARGS=--index-url https://download.pytorch.org/whl/cpu" in cpu  # the CPU build of torch
    assert f"--build-arg BASE_IMAGE={base}-cu128 " in gpu and f"--tag {image}:{tag}-gpu" in gpu
    assert "--build-arg TORCH_PIP_ARGS= " in gpu  # PyPI's torch: the CUDA build

    # The line it prints points cluster.yaml at exactly these images, in the docker section and
    # in the ECR login, and the result still passes Ray's check.
    (sed_line,) = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("sed ")]
    copy = tmp_path / "cluster.yaml"
    copy.write_text((REPO / "cluster.yaml").read_text())
    subprocess.run(sed_line, shell=True, cwd=tmp_path, check=True)
    filled = copy.read_text()
    assert "<your-registry>" not in filled and "<tag>" not in filled
    prepared = _prepared(filled)
    assert prepared["docker"]["head_image"] == f"{image}:{tag}-cpu"
    assert prepared["docker"]["worker_image"] == f"{image}:{tag}-gpu"
    assert registry in prepared["initialization_commands"][0]


def test_build_push_usage(tmp_path):
    done = _build_push(tmp_path, "only-a-registry")
    assert done.returncode == 2 and "usage:" in done.stderr and not (tmp_path / "calls").exists()


def test_dockerfile_runs_the_install_script_the_venv_check_runs():
    """The image's install steps are docker/install.sh, which docker/check-install.sh runs into a
    clean virtual environment where no Docker engine is at hand: the two cannot drift apart."""
    import ray

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    assert len(runs) == 1 and "docker/install.sh" in runs[0]
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert 'bash "$root/docker/install.sh"' in (REPO / "docker" / "check-install.sh").read_text()
    install = (REPO / "docker" / "install.sh").read_text()
    assert f"ray_version={ray.__version__}" in install
    assert "torch_version=2.13.0" in install
    for script in ("install.sh", "build-push.sh", "check-install.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "docker" / script)]).returncode == 0


def test_header_and_docs_launch_the_driver_with_ray_job_submit():
    header = "\n".join(line for line in (REPO / "cluster.yaml").read_text().splitlines() if line.startswith("#"))
    docs = (REPO / "docs" / "cluster.md").read_text()
    for text in (header, docs):
        assert "ray job submit --address http://127.0.0.1:8265" in text
        assert "cxrsweep run all --preset paper --address auto" in text
        assert "ray job logs" in text and "-f" in text
        assert "ray exec" not in text and "ray submit" not in text
    for profile in ("cxrsweep-head", "cxrsweep-worker"):
        assert f"aws iam create-instance-profile --instance-profile-name {profile}" in docs
    assert DLAMI_PARAMETER in docs
