"""docker-compose.yml and the native stack (scripts/stack.py) pin the same versions and ports.

No service is started: this reads scripts/stack/versions.toml, docker-compose.yml, the shared
config templates and the native script's own settings.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
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
    registry = versions["registry"]
    assert _service(compose, "registry")["image"] == f"{registry['image']}:{registry['version']}"
    prefect = versions["prefect"]
    assert (
        _service(compose, "prefect")["image"]
        == f"prefecthq/prefect:{prefect['version']}-python{prefect['python']}"
    )
    superset = versions["superset"]
    for name in ("superset-init", "superset"):
        assert _service(compose, name)["image"] == f"cascade/superset:{superset['version']}"
    build = _service(compose, "superset-init")["build"]
    assert build["args"]["SUPERSET_VERSION"] == superset["version"]
    assert f"FROM {superset['image']}:$${{SUPERSET_VERSION}}" in build["dockerfile_inline"]
    pins = (ROOT / "bi" / "superset" / "requirements.txt").read_text()
    assert f"\npsycopg2-binary=={build['args']['PSYCOPG2_VERSION']}\n" in pins
    assert _service(compose, "superset-db")["image"] == _service(compose, "postgres")["image"]


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
        "superset": {8088: versions["superset"]["port"]},
        "registry": {5000: versions["registry"]["port"]},
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
    assert members("bi") == {"superset-db", "superset-init", "superset"}
    assert members("workers") == {"registry", "worker"}
    assert members("all") == set(compose["services"]) - members("bi") - members("workers")


def test_native_env_file_keys_and_addresses(native: ModuleType, versions: dict[str, Any]) -> None:
    env = native.stack_env(versions, {})
    bi = native.stack_env(versions, {}, with_bi=True)
    assert set(bi) - set(env) == {
        "SUPERSET_URL", "SUPERSET_ADMIN_USER", *native.BI_SECRET_KEYS,
    }  # fmt: skip
    assert bi["SUPERSET_URL"] == f"http://127.0.0.1:{versions['superset']['port']}"
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
    assert set(example) == set(bi)
    for key in set(bi) - set(native.SECRET_KEYS) - set(native.BI_SECRET_KEYS):
        assert example[key] == bi[key], key


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


def test_bi_secrets_are_generated_with_bi_and_kept_without_it(
    native: ModuleType, versions: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in (*native.SECRET_KEYS, *native.BI_SECRET_KEYS):
        monkeypatch.delenv(key, raising=False)
    plain = native.stack_env(versions, {})
    assert not set(native.BI_SECRET_KEYS) & set(plain)  # plain `up` writes what it did before
    bi = native.stack_env(versions, plain, with_bi=True)
    secrets = [bi[key] for key in (*native.SECRET_KEYS, *native.BI_SECRET_KEYS)]
    assert len(set(secrets)) == len(secrets)
    assert {k: bi[k] for k in plain} == plain
    # a later plain `up` (or `down`) keeps Superset's secrets in stack.env
    assert native.stack_env(versions, bi) == bi


def test_bi_services_are_chosen_only_with_bi(native: ModuleType) -> None:
    assert "superset" not in native.select(None)
    assert native.select(None, with_bi=True)[-1] == "superset"
    assert native.select("postgres,superset") == ["postgres", "superset"]
    with pytest.raises(native.StackError, match=r"choose from .*superset"):
        native.select("metabase")


def test_compose_superset_gets_what_its_setup_and_config_read(compose: dict[str, Any]) -> None:
    """The variables bi/superset/*.py read are the ones compose's superset services set."""
    read: set[str] = set()
    for name in ("setup_superset.py", "superset_config.py"):
        text = (ROOT / "bi" / "superset" / name).read_text()
        read |= set(re.findall(r"_(?:env|required)\(\s*[\"']([A-Z_]+)[\"']", text))
    read |= {"SUPERSET_CONFIG_PATH"}  # Superset's own
    for name in ("superset-init", "superset"):
        assert set(_service(compose, name)["environment"]) == read, name
