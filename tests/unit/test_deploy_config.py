"""The deployment files and the flow-run image agree with each other and with the workers.

``prefect.yaml`` (process pool), ``prefect-docker.yaml`` and ``prefect-kubernetes.yaml`` declare
the same deployments; the image sets' steps resolve to prefect-docker's functions with the
arguments they accept, their job variables satisfy the docker and kubernetes workers' own
base job templates, and their pull step is the image's working directory, not a path of the
deployer's machine. Building and pushing the image needs a Docker engine: that part is not
run here (see docs/deploy-docker.md for what was built where).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGE_SETS = {"prefect-docker.yaml": "docker", "prefect-kubernetes.yaml": "kubernetes"}
SHARED_KEYS = ("entrypoint", "description", "tags", "concurrency_limit", "schedules", "triggers")
PROCESS_ONLY = {"cascade-maintain"}  # embedded-profile maintenance; Nessie's GC on the stack


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / name).read_text())
    return loaded


def _deployments(name: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _load(name)["deployments"]}


def _base_job_template(kind: str) -> dict[str, Any]:
    if kind == "docker":
        from prefect_docker.worker import DockerWorker

        template: dict[str, Any] = DockerWorker.get_default_base_job_template()
        return template
    from prefect_kubernetes.worker import KubernetesWorker

    template = KubernetesWorker.get_default_base_job_template()
    return template


@pytest.mark.parametrize("name", sorted(IMAGE_SETS))
def test_image_sets_declare_the_process_deployments(name: str) -> None:
    process = _deployments("prefect.yaml")
    image = _deployments(name)
    assert set(image) == set(process) - PROCESS_ONLY
    for deployment, spec in image.items():
        for key in SHARED_KEYS:
            assert spec.get(key) == process[deployment].get(key), (deployment, key)


@pytest.mark.parametrize("name", sorted(IMAGE_SETS))
def test_image_sets_start_in_the_image_not_on_the_deployers_machine(name: str) -> None:
    config = _load(name)
    dockerfile = (REPO / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)[-1]
    assert config["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": workdir}}]
    text = (REPO / name).read_text()
    assert "$PWD" not in text and "/work/" not in text and "volumes" not in text
    for spec in config["deployments"]:
        assert (REPO / spec["entrypoint"].split(":")[0]).exists()
        assert "pull" not in spec  # no deployment brings its own host path back


@pytest.mark.parametrize("name", sorted(IMAGE_SETS))
def test_build_and_push_steps_resolve_with_the_arguments_they_take(name: str) -> None:
    config = _load(name)
    steps = [*config["build"], *config["push"]]
    ids: set[str] = set()
    for step in steps:
        ((qualified, arguments),) = step.items()
        module, function = qualified.rsplit(".", 1)
        target = getattr(importlib.import_module(module), function)
        kwargs = {k: v for k, v in arguments.items() if k not in ("id", "requires")}
        inspect.signature(target).bind(**kwargs)  # raises on an argument it does not take
        for reference in re.findall(r"\{\{ ([\w-]+)\.\w+ \}\}", str(kwargs)):
            assert reference in ids, f"{qualified} uses {reference!r} before it is built"
        ids.add(arguments.get("id", ""))
    build = dict(config["build"][1]["prefect_docker.deployments.steps.build_docker_image"])
    assert build["tag"] == "{{ git-commit.stdout }}"  # the image is named after the commit
    assert "git describe" in config["build"][0]["prefect.deployments.steps.run_shell_script"][
        "script"]


@pytest.mark.parametrize(("name", "kind"), sorted(IMAGE_SETS.items()))
def test_job_variables_fit_the_workers_base_job_template(name: str, kind: str) -> None:
    schema = _base_job_template(kind)["variables"]
    for spec in _load(name)["deployments"]:
        variables = spec["work_pool"]["job_variables"]
        assert set(variables) <= set(schema["properties"]), spec["name"]
        jsonschema.validate(variables, schema)
        assert variables["image"] == "{{ build-image.image }}"
        assert spec["work_pool"]["name"] == f"cascade-{kind}"


def _memory(variables: dict[str, Any]) -> str:
    return str(variables.get("memory_limit") or variables.get("mem_limit"))


@pytest.mark.parametrize("name", sorted(IMAGE_SETS))
def test_dbt_and_ingest_runs_get_their_own_resources(name: str) -> None:
    jobs = {n: d["work_pool"]["job_variables"] for n, d in _deployments(name).items()}
    assert _memory(jobs["cascade-build-branch"]) != _memory(jobs["cascade-ingest-window"])
    assert _memory(jobs["cascade-ingest-day"]) == _memory(jobs["cascade-ingest-window"])
    assert _memory(jobs["cascade-backfill"]) == _memory(jobs["cascade-daily"])


@pytest.mark.parametrize("name", ["prefect.yaml", *sorted(IMAGE_SETS)])
def test_daily_is_deployed_with_its_schedule_off(name: str) -> None:
    (schedule,) = _deployments(name)["cascade-daily"]["schedules"]
    assert schedule["active"] is False  # on once a site is configured (docs)


@pytest.mark.parametrize("name", ["prefect.yaml", *sorted(IMAGE_SETS)])
def test_a_promote_by_hand_triggers_publish(name: str) -> None:
    (trigger,) = _deployments(name)["cascade-publish"]["triggers"]
    assert trigger["expect"] == ["cascade.main.promoted"]
    assert trigger["match"] == {"prefect.resource.id": "cascade.lakehouse.main",
                                "cascade.promoted-by": "promote"}
    assert trigger["match_related"] == {"prefect.resource.role": "deployment",
                                        "prefect.resource.name": "cascade-promote"}


def test_flow_run_image_is_multi_stage_non_root_and_runs_the_flow_run_command() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) >= 2
    assert "uv sync --frozen --no-dev" in dockerfile
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)[-1]
    assert not user.startswith(("root", "0"))
    assert 'CMD ["prefect", "flow-run", "execute"]' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignored if line and not line.startswith("#")]
    assert rules[0] == "*"  # an allow-list: .env, stack.env, .venv and local lakehouses stay out
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.MULTILINE))
    assert copied <= allowed | {"pyproject.toml"}


@pytest.mark.parametrize("name", ["prefect.yaml", *sorted(IMAGE_SETS)])
def test_stack_runs_name_every_document_register_blocks_saves(name: str) -> None:
    from blocks.register import block_selectors

    env = {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p", "S3_ENDPOINT": "http://s3",
           "NESSIE_URI": "http://nessie", "POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p",
           "POSTGRES_HOST": "db", "NIGHTSCOUT_URL": "http://ns"}
    printed = block_selectors(env, "cascade")
    assert printed["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/cascade-results"
    config = _load(name)
    if name == "prefect.yaml":
        envs = [config["definitions"]["work_pools"]["stack"]["job_variables"]["env"]]
    else:
        envs = [d["work_pool"]["job_variables"]["env"] for d in config["deployments"]]
    for job_env in envs:
        assert job_env["CASCADE_PROFILE"] == "stack"
        assert {k: job_env[k] for k in printed} == printed
        assert job_env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
        assert job_env["PREFECT_TASKS_DEFAULT_PERSIST_RESULT"] == "false"


def test_deployment_files_and_worker_image_name_the_installed_prefect() -> None:
    import prefect

    for name in ("prefect.yaml", *IMAGE_SETS):
        assert _load(name)["prefect-version"] == prefect.__version__, name
    values = yaml.safe_load((REPO / "deploy" / "kubernetes" / "prefect-worker-values.yaml")
                            .read_text())
    assert values["worker"]["image"]["prefectTag"] == f"{prefect.__version__}-python3.11-kubernetes"
    assert values["worker"]["config"]["workPool"] == "cascade-kubernetes"


def test_base_job_template_keeps_the_workers_variables_and_hardens_the_pod() -> None:
    import json

    ours = json.loads((REPO / "deploy" / "kubernetes" / "base-job-template.json").read_text())
    default = _base_job_template("kubernetes")
    assert ours["variables"] == default["variables"]  # the job variables above still apply
    pod = ours["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/home/cascade"}
    assert container["args"] == "{{ command }}"  # the image's tini entrypoint stays
