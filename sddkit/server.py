"""``sddkit server``: one tracking server on the project's store, for workers on other machines. It proxies
artifacts; while it serves, the store's locations read ``mlflow-artifacts:/…`` (``relocation``) and a marker beside
the store (``paths.live_server``) sends this machine's commands through it too. Anything but loopback needs basic
auth (``--auth``) or a loudly named flag."""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import socket
import sys
from pathlib import Path

from sddkit import relocation, serving
from sddkit.files import locked, write_atomic
from sddkit.paths import StoreURI, live_server, process_started, server_marker, sqlite_path, store_lock
from sddkit.serving import ServeError

ADMIN = "admin"
PASSWORD_ENV = "SDDKIT_SERVER_PASSWORD"
INSECURE_FLAG = "--insecure-no-auth-on-open-network"
WILDCARDS = ("0.0.0.0", "::")


def serve(uri: str, root: Path, host: str, port: int | None, experiment: str, auth: bool = False,
          insecure: bool = False, ready_timeout: float = 180.0) -> int:
    """Serve the store ``uri`` on ``host``:``port`` until Ctrl-C, SIGTERM or SIGHUP (exit code 0), printing the
    one line of environment workers need."""
    uri = StoreURI(uri)  # parsed once: every step below reads its sqlite file from it
    if not (auth or insecure or is_loopback(host)):
        raise ServeError(f"--host {host} is not a loopback address: anyone on that network could read and "
                         f"write the store; add --auth (MLflow's basic auth), or {INSECURE_FLAG} to serve it "
                         f"without authentication")
    check_not_served(uri)
    port = serving.checked_port(port, host)
    command = serving.mlflow_server(uri, root, host, port, "sddkit server", "--serve-artifacts",
                                    *(["--app-name", "basic-auth"] if auth else []))
    create_experiment(uri, root, experiment)  # before workers race to create it
    env = auth_env(uri, root) if auth else {}
    reach = url_host(socket.gethostname() if host in WILDCARDS else host)  # a wildcard is reached by our name
    if not is_loopback(host) and "MLFLOW_SERVER_ALLOWED_HOSTS" not in os.environ:
        # MLflow's default Host-header allowlist (loopback and private addresses), plus the name workers use
        from sddkit.store import default_allowed_hosts
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = ",".join([*default_allowed_hosts(), reach, f"{reach}:*"])
    local = f"http://{url_host(serving.LOOPBACK if host in WILDCARDS else host)}:{port}"
    workers = f"http://{reach}:{port}"

    def ready(url: str) -> None:
        print(workers_line(workers, ADMIN if auth else None, env.get("MLFLOW_AUTH_ADMIN_PASSWORD")), flush=True)
        print(f"serving {uri}, artifacts proxied; this machine's commands on it go through {local} while it "
              f"runs{' (with the same credentials)' if auth else ''}; Ctrl-C stops it", file=sys.stderr)

    db = root / uri.db if uri.db is not None else None
    if db is not None:
        claim(db, local)
    try:
        return serving.run(command, root, local, ready, env, ready_timeout)
    finally:
        if db is not None:  # local again: ``file:`` locations, no marker (what a local open does after a kill -9)
            with locked(store_lock(db)):
                relocation.set_served(db, False)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, it is not plainly this machine alone


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def workers_line(url: str, user: str | None, password: str | None) -> str:
    """What a worker's environment needs. A password from SDDKIT_SERVER_PASSWORD is named, never printed; a
    generated one is shown this once."""
    line = f"workers: MLFLOW_TRACKING_URI={url}"
    if user is not None:
        shown = f'"${PASSWORD_ENV}"' if os.environ.get(PASSWORD_ENV) else shlex.quote(password or "")
        line += f" MLFLOW_TRACKING_USERNAME={user} MLFLOW_TRACKING_PASSWORD={shown}"
    return line


def check_not_served(uri: str) -> None:
    if uri.startswith(("http:", "https:")):
        raise ServeError(f"the tracking store {uri} is a server already (MLFLOW_TRACKING_URI or tracking.uri): "
                         f"`sddkit server` serves a local store; point the workers at {uri} directly")
    db = sqlite_path(uri)
    server = live_server(db) if db is not None else None
    if server is not None:
        raise ServeError(f"{db} is served already, by `sddkit server` (pid {server['pid']} on {server['host']}) at "
                         f"{server['uri']}: use that one, or stop it first")


def create_experiment(uri: str, root: Path, experiment: str) -> None:
    """Created now (workers that start together would each try to). Refused while a trajectory trains on this
    machine straight into the store: its next round would find a served location it cannot write."""
    from sddkit import lease
    from sddkit.tracking import Tracker, TrackingError
    try:
        tracker = Tracker(uri, root)
        tracker.experiment_id(experiment)
        for holder in lease.local_holders(tracker):
            raise ServeError(f"a trajectory is being trained straight into {uri}, by {holder.describe()}: let it "
                             f"finish, or stop it (rerun, it continues through the server), then start the server")
    except TrackingError as exc:
        raise ServeError(str(exc)) from exc


def claim(db: Path, local: str) -> None:
    """Mark ``db`` as served (by this process, at ``local``) and point its locations through the server."""
    marker = {"pid": os.getpid(), "started": process_started(os.getpid()), "host": socket.gethostname(),
              "uri": local}
    with locked(store_lock(db)):
        write_atomic(server_marker(db), json.dumps(marker, indent=1).encode())
        relocation.set_served(db, True)


def auth_env(uri: str, root: Path) -> dict[str, str]:
    """The basic-auth app's configuration: an ini beside the store naming its user database there, and the
    admin's password (SDDKIT_SERVER_PASSWORD, else a new one) in the server's environment only."""
    db = sqlite_path(uri)
    folder = (root / db).parent if db is not None else root
    name = db.stem if db is not None else "mlflow"
    users, ini = folder / f"{name}.auth.db", folder / f".{name}.auth.ini"
    password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(18)
    if len(password) < 12:
        raise ServeError(f"{PASSWORD_ENV}: MLflow's basic auth needs a password of at least 12 characters")
    write_atomic(ini, (f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{users}\n"
                       f"admin_username = {ADMIN}\n"
                       f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n").encode())
    if users.exists():
        from sddkit.store import set_admin_password
        set_admin_password(ini, ADMIN, password)
    # The auth app's CSRF protection signs with this key; one server, so one key for its life is enough.
    secret = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret}
