"""The team tracking server: PostgreSQL and an authenticated MLflow server, as one unit.

    python -m style_exp.server start --dir DIR [--port 5000 | --port 0] [--host 127.0.0.1]
                                     [--db-host 127.0.0.1] [--backend-store-uri postgresql://...]
    python -m style_exp.server stop --dir DIR

``start`` initialises a PostgreSQL cluster in ``DIR/postgres`` on first use (or uses the
database ``--backend-store-uri`` names), starts it and ``mlflow server`` on it with
proxied artifacts (``DIR/artifacts``: workers need no shared disk) and MLflow's
basic-auth app, whose admin password is generated on first start and kept in
``DIR/secrets.json``. Its PostgreSQL also holds Optuna's studies: database ``optuna``,
owned by a role of its own (password also in ``secrets.json``), which searches find
through ``STYLE_EXP_STUDY_STORAGE``. It returns once the server answers an authenticated
request, and writes ``DIR/client.env`` (mode 0600) for clients. ``--port 0`` lets the
server bind a free port itself (no other process can take it between a probe and the
bind); the port it got is read back from its log and written to ``client.env`` and
``server.json``.
``stop`` ends what ``start`` started, by the process ids it recorded in ``DIR/server.json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from style_exp.spec.search import STUDY_STORAGE_ENV, masked

ADMIN = "admin"
DB_USER = "style_exp"
DATABASES = ("mlflow", "mlflow_auth")  # tracking store, user store
# Optuna's studies: a database of their own, owned by a role of their own, whose password
# every search worker gets (client.env) and which reaches nothing else.
STUDY_DB = STUDY_USER = "optuna"
SECRET_KEYS = ("admin_password", "db_password", "flask_secret_key", "study_password")
LOOPBACK = "127.0.0.1"
WAIT_S = 180.0
AUTH_CACHE_TTL_S = 60  # without it each request re-hashes the password (~0.45 s)
PORT_ATTEMPTS = 5  # PostgreSQL cannot pick its own port: probe one, retry if it was taken
PORT_TAKEN = "address already in use"  # PostgreSQL's and uvicorn's words, lower-cased
# What uvicorn (under `mlflow server`) logs once its socket is bound: the only place a
# port it chose (--port 0) can be read back from.
BOUND = re.compile(r"Uvicorn running on \S+:(\d+) \(Press CTRL\+C")


class ServerError(RuntimeError):
    """Start or stop cannot go on; the one-line message names the culprit."""


@dataclass(frozen=True)
class Layout:
    """Where everything of one server lives inside ``--dir``."""

    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def auth_ini(self) -> Path:
        return self.root / "basic_auth.ini"

    @property
    def client_env(self) -> Path:
        return self.root / "client.env"


def write_private(path: Path, text: str) -> Path:
    """Write a file only its owner can read (it holds secrets), never briefly wider."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def load_secrets(layout: Layout) -> dict[str, str]:
    """The admin, database and study passwords and Flask's key: made on first start, then
    kept (one a DIR from an older version lacks is made on its next start)."""
    kept = json.loads(layout.secrets.read_text()) if layout.secrets.is_file() else {}
    made = {name: secrets.token_urlsafe(24) for name in SECRET_KEYS if name not in kept}
    if made:
        kept.update(made)
        write_private(layout.secrets, json.dumps(kept, indent=1))
    return kept


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range or already taken, before anything starts (0: any)."""
    if not 0 <= port < 65536:
        raise ServerError(f"--port {port}: not a TCP port (1-65535, or 0 for any free one)")
    if port == 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(f"--port {port}: cannot listen on {host}:{port} "
                              f"({error.strerror})") from error


def log_since(log: Path, offset: int) -> str:
    """What ``log`` gained after ``offset`` bytes (logs are appended to across starts)."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def log_size(log: Path) -> int:
    return log.stat().st_size if log.is_file() else 0


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (an exited process not yet reaped by its parent does not)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# PostgreSQL ------------------------------------------------------------------------------

def pg_binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's versioned directory."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise ServerError(f"PostgreSQL's {name} was not found: install it "
                          "(apt-get install postgresql) or pass --backend-store-uri")
    return found


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def run_checked(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServerError(f"{what} failed: {detail[0]}")


def init_cluster(layout: Layout, password: str) -> None:
    """A new database cluster in ``DIR/postgres`` owned by the user that will run it."""
    data = layout.postgres
    if (data / "PG_VERSION").is_file():
        return
    data.mkdir(mode=0o700, exist_ok=True)
    password_file = layout.root / "initial.pw"
    write_private(password_file, password + "\n")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")
        reachable = subprocess.run(as_postgres(["test", "-w", str(data)]), check=False)
        if reachable.returncode != 0:
            raise ServerError(f"--dir {layout.root}: the postgres user cannot reach {data} "
                              "(a parent directory is not searchable by others; "
                              "choose another DIR or chmod o+x its parents)")
    try:
        run_checked(as_postgres([pg_binary("initdb"), "-D", str(data), "-U", DB_USER,
                                 f"--pwfile={password_file}", "--auth=scram-sha-256",
                                 "-E", "UTF8", "--no-instructions"]),
                    f"initdb in {data}")
    finally:
        password_file.unlink(missing_ok=True)


def start_postgres(layout: Layout, listen: str) -> tuple[int, int]:
    """Start the cluster on a free port of ``listen`` (TCP only); return its pid and port.

    PostgreSQL cannot choose a port itself, so one is probed free first; when another
    process binds it before PostgreSQL does, PostgreSQL says so and another is tried.
    """
    log = layout.logs / "postgres.log"
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    for _ in range(PORT_ATTEMPTS):
        port, offset = free_port(listen), log_size(log)
        options = f"-p {port} -c listen_addresses={listen} -c unix_socket_directories=''"
        try:
            run_checked(as_postgres([pg_binary("pg_ctl"), "-D", str(layout.postgres), "-l",
                                     str(log), "-w", "-t", "60", "-o", options, "start"]),
                        f"starting PostgreSQL (see {log})")
        except ServerError:
            if PORT_TAKEN in log_since(log, offset).lower():
                continue
            raise
        return int((layout.postgres / "postmaster.pid").read_text().split()[0]), port
    raise ServerError(f"starting PostgreSQL: every port tried on {listen} was taken "
                      f"({PORT_ATTEMPTS} attempts, see {log})")


def allow_remote_clients(layout: Layout, listen: str) -> None:
    """Listening beyond loopback: accept password logins from any address (once)."""
    hba = layout.postgres / "pg_hba.conf"
    line = "host all all all scram-sha-256  # style_exp.server --db-host\n"
    if listen != LOOPBACK and line not in hba.read_text():
        with hba.open("a") as handle:
            handle.write(line)


def create_databases(port: int, password: str, study_password: str) -> None:
    """The tracking and user-store databases and the study database with its role, if
    they are not there yet; the role's password is (re)set to ``study_password``.

    Only the role that owns them may connect to each (no PUBLIC grant): the study's
    password, which every search worker holds, opens the study database and no other.
    """
    import psycopg2

    connection = psycopg2.connect(host=LOOPBACK, port=port, user=DB_USER, password=password,
                                  dbname="postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (STUDY_USER,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            cursor.execute(f'{verb} ROLE "{STUDY_USER}" LOGIN PASSWORD %s', (study_password,))
            owners = {**dict.fromkeys(DATABASES, DB_USER), STUDY_DB: STUDY_USER}
            for name, owner in owners.items():
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
                cursor.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
    finally:
        connection.close()


def stop_postgres(data: Path, pid: int) -> None:
    run_checked(as_postgres([pg_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                f"stopping PostgreSQL (pid {pid})")


# MLflow ----------------------------------------------------------------------------------

def sqlalchemy_uri(uri: str) -> str:
    """A ``postgresql://`` URI for psycopg2 (SQLAlchemy 2.1 would pick psycopg 3).

    Errors never echo ``uri``: it may hold a password.
    """
    scheme = urlsplit(uri).scheme
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ServerError(f"--backend-store-uri must be postgresql://USER:PASSWORD@HOST:PORT/DB, "
                          f"not a {scheme or 'scheme-less'} URI")
    return "postgresql+psycopg2://" + uri.split("://", 1)[1]


def local_database_uri(port: int, password: str, name: str, user: str = DB_USER,
                       host: str = LOOPBACK) -> str:
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{name}"


def auth_config(database_uri: str, admin_password: str) -> str:
    """basic-auth's settings: users in PostgreSQL, read-only by default, cached logins."""
    return "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {database_uri}",
        f"admin_username = {ADMIN}",
        f"admin_password = {admin_password}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
        "",
    ])


def start_mlflow(layout: Layout, host: str, port: int, backend_uri: str,
                 flask_secret: str) -> subprocess.Popen:
    """``mlflow server`` in its own session (so stop can end its workers with it).

    The database URI goes through the environment, not the command line, which any
    user can list.
    """
    env = {**os.environ,
           "MLFLOW_BACKEND_STORE_URI": backend_uri,
           "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_ini),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
               "--workers", "2", "--serve-artifacts",
               "--artifacts-destination", str(layout.artifacts), "--app-name", "basic-auth"]
    log = open(layout.logs / "mlflow.log", "ab")  # noqa: SIM115 -- the server keeps it
    return subprocess.Popen(command, cwd=layout.root, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a GET (0: nothing answered)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return 0


def probe_url(base: str) -> str:
    """An API call every authenticated user may make."""
    return f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


def exited(process: subprocess.Popen, log: Path, offset: int, port: int) -> ServerError:
    """Why the server process ended early (mlflow exits with 0 when its port was taken)."""
    if PORT_TAKEN in log_since(log, offset).lower():
        return ServerError(f"--port {port}: another process took it while mlflow started")
    return ServerError(f"mlflow server exited with status {process.returncode}: see {log}")


def bound_port(process: subprocess.Popen, log: Path, offset: int = 0,
               wait_s: float = WAIT_S) -> int:
    """The port ``mlflow server`` bound, read from its log (past ``offset``) once it says.

    With ``--port 0`` the server binds a free port itself, so no other process can take
    it between a probe and the bind.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = BOUND.search(log_since(log, offset))
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise exited(process, log, offset, 0)
        time.sleep(0.2)
    raise ServerError(f"mlflow server did not bind a port within {wait_s:.0f} s: see {log}")


def wait_until_answering(base: str, password: str, process: subprocess.Popen,
                         log: Path, offset: int = 0) -> None:
    """Until the server answers as ours: our admin password accepted, no password refused.

    A process that took the port first would not do both.
    """
    port = int(base.rsplit(":", 1)[1])
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise exited(process, log, offset, port)
        if (status_of(probe_url(base), basic_auth(ADMIN, password)) == 200
                and status_of(probe_url(base)) == 401):
            return
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer at {base} within {WAIT_S:.0f} s: see {log}")


def stop_session(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the session ``start`` made for the server (leader and workers), then wait."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _group_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# Commands --------------------------------------------------------------------------------

def reachable_name(host: str) -> str:
    """How clients name an address we listen on: loopback as such, this machine's name for
    a wildcard (every address), else the address given (IPv6 in brackets, for a URL)."""
    name = LOOPBACK if host in (LOOPBACK, "localhost") else (
        socket.getfqdn() if host in ("0.0.0.0", "::") else host)
    return f"[{name}]" if ":" in name else name


def client_address(host: str, port: int) -> str:
    """The URL clients use: the loopback one, or this machine's name when listening wider."""
    return f"http://{reachable_name(host)}:{port}"


def prepare_dir(directory: Path) -> Layout:
    """Create DIR (private) and its log and artifact folders; refuse a file or a running server."""
    if directory.exists() and not directory.is_dir():
        raise ServerError(f"--dir {directory}: exists and is not a directory")
    layout = Layout(directory.resolve())
    for path in (layout.root, layout.logs, layout.artifacts):
        path.mkdir(parents=True, exist_ok=True)
    # Others may search (not list) DIR so the postgres user reaches DIR/postgres; every
    # file holding a secret is 0600.
    layout.root.chmod(0o711)
    if layout.state.is_file():
        pid = json.loads(layout.state.read_text()).get("mlflow_pid")
        if alive(pid):
            raise ServerError(f"--dir {directory}: a server started there is running "
                              f"(pid {pid}); stop it first")
    return layout


def start(directory: Path, host: str, port: int, db_host: str,
          backend_store_uri: str | None) -> dict[str, object]:
    """Bring up the database (unless given one) and the server; return what was started."""
    check_port(host, port)
    if backend_store_uri:
        sqlalchemy_uri(backend_store_uri)  # refuse a bad URI before DIR is touched
    layout = prepare_dir(directory)
    try:
        return _start(layout, host, port, db_host, backend_store_uri)
    except BaseException:
        if layout.state.is_file():  # leave nothing running half-started
            stop(layout.root)
        raise


def _start(layout: Layout, host: str, port: int, db_host: str,
           backend_store_uri: str | None) -> dict[str, object]:
    keys = load_secrets(layout)
    if backend_store_uri and backend_store_uri != keys.get("backend_store_uri"):
        keys["backend_store_uri"] = backend_store_uri  # later starts of DIR use it too
        write_private(layout.secrets, json.dumps(keys, indent=1))
    backend_store_uri = keys.get("backend_store_uri")
    state: dict[str, object] = {"host": host, "port": port, "postgres_pid": None}
    study: dict[str, str] = {}  # a database given is not ours to add a study database to
    if backend_store_uri:
        tracking_uri = auth_uri = sqlalchemy_uri(backend_store_uri)
    else:
        init_cluster(layout, keys["db_password"])
        allow_remote_clients(layout, db_host)
        state["postgres_pid"], db_port = start_postgres(layout, db_host)
        state.update(postgres_data=str(layout.postgres), db_address=f"{db_host}:{db_port}")
        layout.state.write_text(json.dumps(state, indent=1))
        create_databases(db_port, keys["db_password"], keys["study_password"])
        tracking_uri, auth_uri = (local_database_uri(db_port, keys["db_password"], name)
                                  for name in DATABASES)
        study[STUDY_STORAGE_ENV] = local_database_uri(
            db_port, keys["study_password"], STUDY_DB, STUDY_USER, reachable_name(db_host))
        state["study_database"] = masked(study[STUDY_STORAGE_ENV])
    write_private(layout.auth_ini, auth_config(auth_uri, keys["admin_password"]))
    log = layout.logs / "mlflow.log"
    offset = log_size(log)
    process = start_mlflow(layout, host, port, tracking_uri, keys["flask_secret_key"])
    state["mlflow_pid"] = process.pid
    layout.state.write_text(json.dumps(state, indent=1))  # so a failed start is stopped
    if port == 0:
        port = bound_port(process, log, offset)
    state.update(port=port, url=client_address(host, port))
    layout.state.write_text(json.dumps(state, indent=1))
    wait_until_answering(f"http://{LOOPBACK if host in ('0.0.0.0', '::') else host}:{port}",
                         keys["admin_password"], process, log, offset)
    client = {"MLFLOW_TRACKING_URI": state["url"], "MLFLOW_TRACKING_USERNAME": ADMIN,
              "MLFLOW_TRACKING_PASSWORD": keys["admin_password"], **study}
    write_private(layout.client_env, "".join(f"{name}={value}\n"
                                             for name, value in client.items()))
    return state


def stop(directory: Path) -> list[str]:
    """End the server and the database that ``start`` recorded; say what was stopped."""
    layout = Layout(directory.resolve())
    if not layout.state.is_file():
        raise ServerError(f"--dir {directory}: no server.json, nothing was started there")
    state = json.loads(layout.state.read_text())
    stopped = []
    if alive(state.get("mlflow_pid")):
        stop_session(state["mlflow_pid"])
        stopped.append(f"mlflow server (pid {state['mlflow_pid']})")
    if alive(state.get("postgres_pid")):
        stop_postgres(Path(state["postgres_data"]), state["postgres_pid"])
        stopped.append(f"PostgreSQL (pid {state['postgres_pid']})")
    layout.state.unlink()
    return stopped


def report_start(layout_root: Path, state: dict[str, object]) -> str:
    """What a user needs after start: where things are and how clients connect (no secret)."""
    layout = Layout(layout_root.resolve())
    database = (f"PostgreSQL on {state['db_address']} (data in {layout.postgres})"
                if state.get("postgres_pid") else "the database given by --backend-store-uri")
    study = (f"Optuna studies in {state['study_database']} ({STUDY_STORAGE_ENV} in client.env)"
             if state.get("study_database") else
             f"no study database made: --backend-store-uri's database is not managed here; "
             f"searches need {STUDY_STORAGE_ENV} or search.storage")
    if (state.get("study_database") and state["host"] != LOOPBACK
            and str(state["db_address"]).startswith(f"{LOOPBACK}:")):
        study += "; PostgreSQL listens on loopback only: trials on other machines need --db-host"
    return "\n".join([
        f"MLflow server at {state['url']} (pid {state['mlflow_pid']}), users and runs in "
        f"{database}, artifacts in {layout.artifacts}",
        study,
        f"credentials for clients (user {ADMIN}): {layout.client_env}, readable by you only",
        f"  set -a; . {layout.client_env}; set +a    # then: python run.py ...",
        f"stop with: python -m style_exp.server stop --dir {layout_root}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start PostgreSQL and the MLflow server")
    stop_parser = commands.add_parser("stop", help="stop what start started in DIR")
    for sub in (start_parser, stop_parser):
        sub.add_argument("--dir", type=Path, required=True)
    start_parser.add_argument("--port", type=int, default=5000,
                              help="0: a free port the server binds itself (see client.env)")
    start_parser.add_argument("--host", default=LOOPBACK,
                              help="address the MLflow server listens on (default loopback)")
    start_parser.add_argument("--db-host", default=LOOPBACK,
                              help="address PostgreSQL listens on (default loopback)")
    start_parser.add_argument("--backend-store-uri", default=None,
                              help="an existing postgresql:// database instead of our own "
                              "(remembered for later starts of DIR)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            state = start(args.dir, args.host, args.port, args.db_host, args.backend_store_uri)
            print(report_start(args.dir, state))
        else:
            stopped = stop(args.dir)
            print("stopped " + (", ".join(stopped) if stopped else "nothing (none was running)"))
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
