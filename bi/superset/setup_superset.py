"""Prepare Superset for Cascade, idempotently: schema, roles, admin, then the dashboards.

Runs with Superset's own Python (``scripts/stack.py`` before it starts the web server, and
docker-compose's ``superset-init`` job), with Superset's settings from
``SUPERSET_CONFIG_PATH``:

1. migrate the metadata database to this Superset's schema;
2. create or refresh roles and permissions (``superset init``) when the schema moved or
   this Superset version has not done it yet;
3. create the admin ``SUPERSET_ADMIN_USER`` or set its password to
   ``SUPERSET_ADMIN_PASSWORD`` (the password never appears on a command line);
4. import every asset under ``CASCADE_BI_ASSETS`` (Superset's export format), overwriting
   what an earlier import made: the marts connection's address comes from
   ``POSTGRES_HOST``/``POSTGRES_PORT``/``MARTS_DATABASE`` and the datasets' descriptions
   from the dbt docs under ``CASCADE_DBT_MARTS`` (one place for them: the dbt yml files).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

MARTS_DATABASE_FILE = "databases/cascade_marts.yaml"


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, "").strip() or default
    if not value:
        raise SystemExit(f"{name} is not set: run this through `stack up --with bi` or compose")
    return value


# ------------------------------------------------------------------------- the bundle


def marts_uri() -> str:
    """The marts through the read-only role; its password is added at connect time."""
    host, port = _env("POSTGRES_HOST", "127.0.0.1"), _env("POSTGRES_PORT", "5432")
    return f"postgresql+psycopg2://marts_reader@{host}:{port}/{_env('MARTS_DATABASE', 'marts')}"


def dbt_docs(marts_dir: Path) -> dict[str, dict[str, Any]]:
    """Model name -> {"description": ..., "columns": {column: description}} from dbt's yml."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(marts_dir.glob("*.yml")):
        for model in (yaml.safe_load(path.read_text()) or {}).get("models", []):
            columns = {
                c["name"]: " ".join(str(c["description"]).split())
                for c in model.get("columns", [])
                if c.get("description")
            }
            description = " ".join(str(model.get("description") or "").split())
            docs[model["name"]] = {"description": description, "columns": columns}
    return docs


def _describe_dataset(config: dict[str, Any], docs: dict[str, dict[str, Any]]) -> None:
    """Fill a dataset's (and its columns') empty descriptions from its dbt model's docs."""
    model = docs.get(config.get("table_name", ""))
    if model is None:
        return
    if not config.get("description"):
        config["description"] = model["description"] or None
    for column in config.get("columns", []):
        text = model["columns"].get(column["column_name"])
        if text and not column.get("description"):
            column["description"] = text


def load_bundle(assets: Path, docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The bundle as Superset's importers take it: relative path -> YAML text."""
    contents: dict[str, str] = {}
    for path in sorted(assets.rglob("*.yaml")):
        name = path.relative_to(assets).as_posix()
        config = yaml.safe_load(path.read_text())
        if name == MARTS_DATABASE_FILE:
            config["sqlalchemy_uri"] = marts_uri()
        elif name.startswith("datasets/"):
            _describe_dataset(config, docs)
        contents[name] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if "metadata.yaml" not in contents or MARTS_DATABASE_FILE not in contents:
        raise SystemExit(f"{assets} is not a Superset assets bundle with {MARTS_DATABASE_FILE}")
    return contents


# ------------------------------------------------------------------------- superset


def _schema_revision() -> str | None:
    from alembic.runtime.migration import MigrationContext
    from superset.extensions import db

    with db.engine.connect() as conn:
        revision: str | None = MigrationContext.configure(conn).get_current_revision()
    return revision


def migrate_and_init(stamp: Path, version: str) -> None:
    """``superset db upgrade``, then ``superset init`` when the schema or version moved."""
    from flask_migrate import upgrade
    from superset import appbuilder, security_manager

    before = _schema_revision()
    upgrade()
    after = _schema_revision()
    marker = f"{version} {after}"
    if before != after or not stamp.exists() or stamp.read_text().strip() != marker:
        print(f"cascade: syncing roles and permissions (schema {before} -> {after})", flush=True)
        appbuilder.add_permissions(update_perms=True)
        security_manager.sync_role_definitions()
        stamp.write_text(marker + "\n")
    else:
        print(f"cascade: schema at {after}, roles already synced for {version}", flush=True)


def ensure_admin(username: str, password: str) -> Any:
    """The admin user, created or given the configured password."""
    from superset import security_manager
    from superset.extensions import db
    from werkzeug.security import check_password_hash

    user = security_manager.find_user(username=username)
    if user is None:
        user = security_manager.add_user(
            username, "Cascade", "Admin", f"{username}@cascade.invalid",
            security_manager.find_role("Admin"), password=password,
        )
        if not user:
            raise SystemExit(f"could not create the Superset admin {username!r}")
        print(f"cascade: created the admin {username}", flush=True)
    elif not check_password_hash(user.password, password):
        security_manager.reset_password(user.id, password)
        print(f"cascade: admin {username}: password set from SUPERSET_ADMIN_PASSWORD", flush=True)
    db.session.commit()
    return user


def import_bundle(contents: dict[str, str], admin: Any) -> None:
    from superset.commands.importers.v1.assets import ImportAssetsCommand
    from superset.utils.core import override_user

    with override_user(admin):
        ImportAssetsCommand(contents).run()
    kinds = sorted({name.split("/")[0] for name in contents if "/" in name})
    counts = ", ".join(f"{sum(n.startswith(k + '/') for n in contents)} {k}" for k in kinds)
    print(f"cascade: imported {counts}", flush=True)


def main() -> int:
    assets = Path(_env("CASCADE_BI_ASSETS"))
    contents = load_bundle(assets, dbt_docs(Path(_env("CASCADE_DBT_MARTS"))))
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        home = Path(_env("SUPERSET_HOME"))
        home.mkdir(parents=True, exist_ok=True)
        migrate_and_init(home / "cascade-init.stamp", app.config["VERSION_STRING"])
        admin = ensure_admin(_env("SUPERSET_ADMIN_USER", "admin"), _env("SUPERSET_ADMIN_PASSWORD"))
        import_bundle(contents, admin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
