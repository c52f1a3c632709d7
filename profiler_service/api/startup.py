"""What ``proxyless-profiler serve`` checks and opens before it says "serving on".

Every failure a user can cause at start-up (an unknown backend, a port in use, a database that does not exist or a
SQLite file that cannot be written, a device already served by another live service on the database) is a :class:`StartupError` with one line naming the problem, raised before the
server starts: the CLI prints that line and exits non-zero, never a traceback.
"""

from __future__ import annotations

import errno
import socket

from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from latency_db.migrate import upgrade_to_head
from latency_db.repository.heartbeats import HeartbeatHeld
from profiler_service.api.heartbeat import Heartbeat
from profiler_service.api.server import bind_socket
from profiler_service.api.state import ServiceState, select_backends
from profiler_service.settings import ProfilerSettings


class StartupError(Exception):
    """A start-up failure: ``str()`` is the one line to show, ``exit_code`` the process's exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def shown_url(url: str) -> str:
    """The database URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def database_problem(url: str, exc: Exception) -> str:
    """One line for a database that cannot be opened, migrated or written."""
    reason = str(getattr(exc, "orig", None) or exc)
    reason = " ".join(reason.split())  # drivers' messages span lines (psycopg: "\n\tIs the server running ...")
    reason = reason.split(" (Background on this error at:")[0]
    if "unable to open database file" in reason or "readonly database" in reason:
        reason += " (is the SQLite file's folder writable by this user?)"
    return f"database {shown_url(url)}: {reason}"


def listen_problem(host: str, port: int, exc: OSError) -> str:
    """One line for a socket that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another service?); choose a free one with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: the host name does not resolve ({exc.strerror})"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def already_served(settings: ProfilerSettings, held: HeartbeatHeld) -> str:
    """One line for a device that another live service serves on this database."""
    return (f"device {settings.device_name!r} (this name and fingerprint) is already served on this database by "
            f"{held.holder.describe(held.now)}: stop that service first, or pass --take-over "
            "(PROFILER_TAKE_OVER=true) to take the device over (the other service then stops measuring)")


def hold_device(settings: ProfilerSettings, state: ServiceState) -> None:
    """Claim the device's heartbeat (one live service per device identity: ``api.heartbeat``) and renew it while
    the service runs (``state.close()`` deletes it). Raises HeartbeatHeld when another live service serves it."""
    heartbeat = Heartbeat(state.sessions, state.device_id, state.worker.owner, settings.heartbeat_s,
                          on_lost=lambda reason: state.worker.stop())
    heartbeat.claim(settings.take_over)
    state.heartbeat = heartbeat
    heartbeat.start()


def open_service(settings: ProfilerSettings) -> tuple[socket.socket, ServiceState]:
    """Check the backends, bind the port, migrate the database, build the service state and claim the device's
    heartbeat, in that order (the cheap checks first: a wrong argument never touches the database). Raises
    StartupError."""
    try:
        select_backends(settings.backend_names())
    except ValueError as exc:
        raise StartupError(str(exc), exit_code=2) from None
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        raise StartupError(listen_problem(settings.host, settings.port, exc)) from None
    try:
        upgrade_to_head(settings.db_url)
        state = ServiceState(settings)
    except ValueError as exc:
        sock.close()
        raise StartupError(str(exc), exit_code=2) from None
    except (SQLAlchemyError, CommandError, OSError) as exc:
        sock.close()
        raise StartupError(database_problem(settings.db_url, exc)) from None
    try:
        hold_device(settings, state)
    except (HeartbeatHeld, SQLAlchemyError) as exc:
        sock.close()
        state.close()
        problem = already_served(settings, exc) if isinstance(exc, HeartbeatHeld) else database_problem(
            settings.db_url, exc)
        raise StartupError(problem) from None
    return sock, state
