"""docker-compose.yml and the native stack (scripts/stack.py) pin the same versions and ports.

No service is started: this reads scripts/stack/versions.toml, docker-compose.yml, the shared
config templates and the native script's own settings.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack"


def _properties(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def versions() -> dict[str, Any]:
    with (STACK / "versions.toml").open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def native() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cascade_stack_script", ROOT / "scripts" / "stack.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, and every binding is on 127.0.0.1."""
    ports: dict[int, int] = {}
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = str(spec).split(":")
        assert host_ip == "127.0.0.1", f"{spec} must bind to 127.0.0.1"
        ports[int(container_port)] = int(host_port)
    return ports


def test_images_match_pinned_versions(compose: dict[str, Any], versions: dict[str, Any]) -> None:
    assert _service(compose, "postgres")["image"] == f"postgres:{versions['postgres']['major']}"
    nessie = versions["nessie"]
    assert _service(compose, "nessie")["image"] == f"{nessie['image']}:{nessie['version']}"
    assert _service(compose, "trino")["image"] == f"trinodb/trino:{versions['trino']['version']}"
    prefect = versions["prefect"]
    assert (
        _service(compose, "prefect")["image"]
        == f"prefecthq/prefect:{prefect['version']}-python{prefect['python']}"
    )


def test_minio_is_built_from_the_pinned_module(
    compose: dict[str, Any], versions: dict[str, Any]
) -> None:
    minio = _service(compose, "minio")
    pinned = versions["minio"]
    assert minio["image"].endswith(f":{pinned['version']}")
    assert minio["build"]["args"]["MINIO_VERSION"] == pinned["version"]
    assert minio["build"]["args"]["MC_VERSION"] == pinned["mc_version"]
    assert f"{pinned['module']}@$${{MINIO_VERSION}}" in minio["build"]["dockerfile_inline"]
    assert _service(compose, "minio-init")["image"] == minio["image"]


def test_ports_match_native_settings(compose: dict[str, Any], versions: dict[str, Any]) -> None:
    expected = {
        "postgres": {5432: versions["postgres"]["port"]},
        "minio": {9000: versions["minio"]["port"], 9001: versions["minio"]["console_port"]},
        "nessie": {19120: versions["nessie"]["port"]},
        "trino": {8080: versions["trino"]["port"]},
        "prefect": {4200: versions["prefect"]["port"]},
    }
    for name, ports in expected.items():
        assert _published(_service(compose, name)) == ports, name
    for name, service in compose["services"].items():
        _published(service)  # nothing else listens beyond localhost
        assert name in expected or "ports" not in service, f"{name} publishes a port"


def test_profiles(compose: dict[str, Any]) -> None:
    def members(profile: str) -> set[str]:
        return {n for n, s in compose["services"].items() if profile in s.get("profiles", [])}

    assert {"postgres", "minio", "nessie", "prefect"} <= members("core")
    assert "trino" not in members("core")
    assert members("query") == {"trino"}
    assert members("all") == set(compose["services"])


def test_native_env_file_keys_and_addresses(native: ModuleType, versions: dict[str, Any]) -> None:
    env = native.stack_env(versions, {})
    assert set(env) == {
        "CASCADE_PROFILE", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD",
        "MARTS_DATABASE", "MARTS_READER_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
        "S3_ENDPOINT", "S3_REGION", "LAKE_BUCKET", "NESSIE_URI", "TRINO_HOST", "TRINO_PORT",
        "TRINO_USER", "TRINO_CATALOG", "PREFECT_API_URL", "CASCADE_WORK_POOL",
    }  # fmt: skip
    assert env["POSTGRES_PORT"] == str(versions["postgres"]["port"])
    assert env["S3_ENDPOINT"] == f"http://127.0.0.1:{versions['minio']['port']}"
    assert env["NESSIE_URI"] == f"http://127.0.0.1:{versions['nessie']['port']}"
    assert env["TRINO_PORT"] == str(versions["trino"]["port"])
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{versions['prefect']['port']}/api"
    assert env["CASCADE_WORK_POOL"] == versions["prefect"]["work_pool"]
    # .env.example documents the same keys with the same non-secret values
    example = _properties(ROOT / ".env.example")
    assert set(example) == set(env)
    for key in set(env) - set(native.SECRET_KEYS):
        assert example[key] == env[key], key


def test_generated_passwords_are_random_and_kept(
    native: ModuleType, versions: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in native.SECRET_KEYS:
        monkeypatch.delenv(key, raising=False)
    first = native.stack_env(versions, {})
    assert len({first[key] for key in native.SECRET_KEYS}) == len(native.SECRET_KEYS)
    assert native.stack_env(versions, first) == first
    monkeypatch.setenv("POSTGRES_PASSWORD", "fromtheenvironment")
    assert native.stack_env(versions, first)["POSTGRES_PASSWORD"] == "fromtheenvironment"


def test_shared_config_files(versions: dict[str, Any]) -> None:
    trino = _properties(STACK / "trino" / "etc" / "config.properties")
    assert trino["http-server.http.port"] == str(versions["trino"]["port"])
    assert trino["catalog.management"] == "dynamic"
    lake = _properties(STACK / "trino" / "catalog" / "lake.properties")
    assert lake["connector.name"] == "iceberg"
    assert lake["iceberg.rest-catalog.prefix"] == "main"
    assert lake["iceberg.rest-catalog.vended-credentials-enabled"] == "false"
    assert lake["s3.aws-secret-key"].startswith("${ENV:")
    nessie = _properties(STACK / "nessie" / "application.properties")
    assert nessie["nessie.version.store.type"] == "JDBC2"
    assert nessie["nessie.catalog.service.s3.default-options.request-signing-enabled"] == "false"
    assert nessie["nessie.catalog.service.s3.default-options.access-key"].startswith(
        "urn:nessie-secret:quarkus:"
    )
    assert versions["nessie"]["management_port"] not in (
        versions["minio"]["port"],
        versions["minio"]["console_port"],
    )


def test_compose_nessie_and_trino_use_the_shared_files(compose: dict[str, Any]) -> None:
    nessie_mounts = " ".join(_service(compose, "nessie")["volumes"])
    assert "./scripts/stack/nessie/application.properties:" in nessie_mounts
    trino_mounts = " ".join(_service(compose, "trino")["volumes"])
    for path in ("etc/config.properties", "etc/jvm.config", "catalog/lake.properties"):
        assert f"./scripts/stack/trino/{path}:" in trino_mounts
    assert _service(compose, "nessie")["environment"]["quarkus.management.port"] == "9002"


def test_venv_prefect_is_the_pinned_one(versions: dict[str, Any]) -> None:
    assert importlib.metadata.version("prefect") == versions["prefect"]["version"]
