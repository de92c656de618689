"""Real, throwaway servers for integration tests.

Each server binds a free loopback port, keeps all of its state in a private temporary
directory and is torn down by ``stop()``.  Nothing here is a mock: PostgreSQL, mosquitto and
Prometheus are the Debian binaries that production uses.

Usage::

    pg = PostgresServer.start()
    url = pg.create_database("t_orders")      # postgresql+asyncpg://syncd@127.0.0.1:N/t_orders
    ...
    pg.stop()

All servers are also context managers, and any server still running when the interpreter
exits is stopped by an ``atexit`` hook, so an aborted test run does not leak processes.

Startup failures raise :class:`ServerStartError` carrying the tail of the server's log.
:class:`BinaryNotFoundError` (a subclass) means the software is not installed; the pytest
fixtures turn that into a skip outside CI (see ``tests/conftest.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

__all__ = [
    "BinaryNotFoundError",
    "MosquittoServer",
    "PostgresServer",
    "PrometheusServer",
    "ServerStartError",
    "find_mosquitto",
    "find_postgres_bindir",
    "find_prometheus",
    "free_port",
    "wait_for_port",
]

HOST = "127.0.0.1"
TEST_OS_USER = "syncdtest"
_LOG_TAIL_LINES = 40


class ServerStartError(RuntimeError):
    """A server did not come up within its deadline (message includes its log tail)."""


class BinaryNotFoundError(ServerStartError):
    """The server software is not installed (run ``scripts/install-deps.sh``)."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Inherently racy (another process may grab it before the server binds it); the ``start``
    functions below retry on a fresh port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    host: str = HOST,
    timeout: float = 10.0,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll until ``host:port`` accepts a TCP connection.

    Returns False on timeout or as soon as ``alive()`` reports the server process died.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        if _port_accepts(host, port):
            return True
        if alive is not None and not alive():
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return False


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


def _port_conflict(log: str) -> bool:
    return "address already in use" in log.lower()


def _is_root() -> bool:
    return os.geteuid() == 0


def _traversable_by_others(path: Path) -> bool:
    """True if every ancestor directory of ``path`` can be entered by an unprivileged user."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _make_tempdir(prefix: str, owner: str | None = None) -> Path:
    """A fresh private directory; when ``owner`` is given (we are root) it is chowned to it.

    The base is ``tempfile.gettempdir()`` unless an unprivileged owner could not reach it (for
    example ``TMPDIR`` under ``/root``), in which case ``/tmp`` is used.
    """
    base = Path(tempfile.gettempdir())
    if owner is not None and not _traversable_by_others(base):
        base = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if owner is not None:
        shutil.chown(path, user=owner, group=pwd.getpwnam(owner).pw_gid)
    return path


_user_lock = threading.Lock()


def _ensure_test_user() -> str:
    """Name of an unprivileged OS user to run servers that refuse root (PostgreSQL).

    Creates the system user ``syncdtest`` if needed; falls back to ``nobody``.
    """
    with _user_lock:
        try:
            pwd.getpwnam(TEST_OS_USER)
            return TEST_OS_USER
        except KeyError:
            pass
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        if os.path.exists(useradd):
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--no-create-home",
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_OS_USER,
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        # Whether we created it or a concurrent test run did, use it if it exists now.
        try:
            pwd.getpwnam(TEST_OS_USER)
            return TEST_OS_USER
        except KeyError:
            pwd.getpwnam("nobody")
            return "nobody"


def _as_user(user: str | None, argv: Sequence[str]) -> list[str]:
    if user is None:
        return list(argv)
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if os.path.exists(runuser):
        return [runuser, "-u", user, "--", *argv]
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, "--reuid", user, "--regid", user, "--init-groups", "--", *argv]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def _register(server: _Stoppable) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server: _Stoppable) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class _Server:
    """Context-manager plumbing shared by all servers."""

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


# --------------------------------------------------------------------------- PostgreSQL


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"/postgresql/([0-9.]+)/bin$", path)
    return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()


def find_postgres_bindir() -> Path:
    """Directory with ``initdb``/``pg_ctl``: newest Debian ``/usr/lib/postgresql/*/bin``, else PATH.

    ``/usr/local/bin/initdb`` may exist as a symlink; the Debian tree is preferred because
    ``psql``/``createdb`` there match the server version (``/usr/bin/psql`` is a wrapper).
    """
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    raise BinaryNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
        "or on PATH; install the Debian 'postgresql' package (scripts/install-deps.sh)"
    )


_DBNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresServer(_Server):
    """A private PostgreSQL cluster on 127.0.0.1 with trust auth, superuser ``syncd``.

    Tuned for tests (fsync, synchronous_commit and full_page_writes off): fast, NOT crash-safe.
    """

    USER = "syncd"
    DATABASE = "syncd"

    def __init__(self, bindir: Path, root: Path, port: int, os_user: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.logfile = root / "postgres.log"
        self.port = port
        self.host = HOST
        self.os_user = os_user
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        *,
        bindir: Path | None = None,
        timeout: float = 60.0,
        settings: dict[str, str] | None = None,
    ) -> PostgresServer:
        """initdb + pg_ctl start + createdb ``syncd``.

        ``settings`` are extra ``-c name=value`` server settings.
        """
        bindir = bindir or find_postgres_bindir()
        os_user = _ensure_test_user() if _is_root() else None
        root = _make_tempdir("syncd-pg-", owner=os_user)
        try:
            cls._initdb(bindir, root, os_user, timeout)
            last_error: ServerStartError | None = None
            for _attempt in range(3):
                server = cls(bindir, root, free_port(), os_user)
                try:
                    server._pg_ctl_start(timeout, settings or {})
                except ServerStartError as exc:
                    if not _port_conflict(str(exc)):
                        raise
                    last_error = exc
                    continue
                _register(server)
                try:
                    server.create_database(cls.DATABASE)
                except BaseException:
                    server.stop()
                    raise
                return server
            assert last_error is not None
            raise last_error
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    @staticmethod
    def _initdb(bindir: Path, root: Path, os_user: str | None, timeout: float) -> None:
        argv = _as_user(
            os_user,
            [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-A",
                "trust",
                "-U",
                PostgresServer.USER,
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        try:
            res = subprocess.run(
                argv,
                cwd=root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(f"initdb timed out after {timeout}s") from exc
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace")
            raise ServerStartError(f"initdb failed (exit {res.returncode}):\n{out[-4000:]}")

    def _pg_ctl_start(self, timeout: float, settings: dict[str, str]) -> None:
        opts = [
            f"-k {self.root}",
            f"-p {self.port}",
            f"-h {self.host}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
            *(f"-c {k}={v}" for k, v in settings.items()),
        ]
        argv = _as_user(
            self.os_user,
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(int(timeout)),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                " ".join(opts),
            ],
        )
        try:
            res = subprocess.run(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout + 5,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self._pg_ctl_stop()
            raise ServerStartError(
                f"pg_ctl start timed out after {timeout}s; log tail:\n{_log_tail(self.logfile)}"
            ) from exc
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace")
            self._pg_ctl_stop()
            raise ServerStartError(
                f"pg_ctl start failed (exit {res.returncode}): {out.strip()}\n"
                f"log tail:\n{_log_tail(self.logfile)}"
            )

    def _pg_ctl_stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        argv = _as_user(
            self.os_user,
            [
                str(self.bindir / "pg_ctl"),
                "stop",
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "-D",
                str(self.datadir),
            ],
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=40,
                check=False,
            )

    def stop(self) -> None:
        """Stop immediately (no checkpoint) and delete the cluster. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _unregister(self)
        try:
            self._pg_ctl_stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------- connection info

    def url_for(self, database: str, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL, e.g. ``postgresql+asyncpg://syncd@127.0.0.1:N/<database>``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.USER}@{self.host}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        """libpq/asyncpg DSN, e.g. ``postgresql://syncd@127.0.0.1:N/<database>``."""
        return f"postgresql://{self.USER}@{self.host}:{self.port}/{database}"

    @property
    def url_asyncpg(self) -> str:
        return self.url_for(self.DATABASE)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.DATABASE)

    # ----------------------------------------------------------------- admin

    def psql(self, sql: str, database: str = "postgres", timeout: float = 30.0) -> str:
        """Run SQL with the cluster's own ``psql``; returns unaligned, tuples-only output."""
        psql = self.bindir / "psql"
        exe = str(psql) if psql.exists() else (shutil.which("psql") or "psql")
        res = subprocess.run(
            [
                exe,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.USER,
                "-d",
                database,
                "-c",
                sql,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"psql failed (exit {res.returncode}) for {sql!r}: "
                f"{res.stderr.decode(errors='replace').strip()}"
            )
        return res.stdout.decode()

    def create_database(self, name: str, *, drop_existing: bool = False) -> str:
        """``CREATE DATABASE name`` (from template0: ~tens of ms); returns its asyncpg URL.

        ``name`` must be a plain identifier (letters, digits, underscores).
        """
        if not _DBNAME_RE.match(name):
            raise ValueError(f"not a plain database identifier: {name!r}")
        if drop_existing:
            self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        if not _DBNAME_RE.match(name):
            raise ValueError(f"not a plain database identifier: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __repr__(self) -> str:
        return f"PostgresServer({self.dsn!r}, root={str(self.root)!r})"


# --------------------------------------------------------------------------- mosquitto


def find_mosquitto() -> Path:
    for cand in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise BinaryNotFoundError(
        "mosquitto not found (/usr/sbin/mosquitto); install the Debian 'mosquitto' package"
    )


class MosquittoServer(_Server):
    """A private mosquitto 2.x broker on 127.0.0.1 with on-disk persistence.

    ``kill()`` simulates a crash (state since the last autosave, at most ~1 s old, is lost);
    ``restart()`` is a graceful stop (persistence saved) and start on the same port and
    persistence directory, so persistent sessions and their queued QoS>0 messages survive.
    """

    def __init__(self, binary: Path, root: Path, port: int, extra_config: Sequence[str]) -> None:
        self.binary = binary
        self.root = root
        self.port = port
        self.host = HOST
        self.config = root / "mosquitto.conf"
        self.logfile = root / "mosquitto.log"
        self.persistence_dir = root / "persistence"
        self.extra_config = list(extra_config)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @classmethod
    def start(
        cls,
        *,
        binary: Path | None = None,
        timeout: float = 10.0,
        extra_config: Sequence[str] = (),
    ) -> MosquittoServer:
        """Start a broker; ``extra_config`` lines are appended to the generated config."""
        binary = binary or find_mosquitto()
        root = _make_tempdir("syncd-mqtt-")
        try:
            last_error: ServerStartError | None = None
            for _attempt in range(3):
                server = cls(binary, root, free_port(), extra_config)
                server._write_config()
                try:
                    server._spawn(timeout)
                except ServerStartError as exc:
                    if not _port_conflict(str(exc)):
                        raise
                    last_error = exc
                    continue
                _register(server)
                return server
            assert last_error is not None
            raise last_error
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _write_config(self) -> None:
        self.persistence_dir.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if _is_root():
            # Otherwise mosquitto drops privileges to user 'mosquitto', which cannot write
            # our private persistence directory.
            lines.append("user root")
        lines.extend(self.extra_config)
        self.config.write_text("\n".join(lines) + "\n")

    def _spawn(self, timeout: float) -> None:
        with open(self.logfile, "ab") as log:
            log.write(f"=== syncd tests: starting mosquitto on port {self.port}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.config)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._proc = proc
        if not wait_for_port(self.port, self.host, timeout, alive=lambda: proc.poll() is None):
            code = proc.poll()
            _terminate(proc, signal.SIGKILL, 5)
            self._proc = None
            state = f"exited with {code}" if code is not None else f"not ready in {timeout}s"
            raise ServerStartError(
                f"mosquitto on port {self.port} {state}; log tail:\n{_log_tail(self.logfile)}"
            )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the broker (crash). The directory stays; ``restart()`` brings it back."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGKILL, 5)

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (persistence is saved). The directory stays; see ``restart()``."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGTERM, timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Graceful stop (if running) and start again on the same port and persistence."""
        if self._stopped:
            raise RuntimeError("restart() after stop()")
        self.terminate()
        self._spawn(timeout)

    def stop(self) -> None:
        """SIGTERM, wait, delete the directory. Final and idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _unregister(self)
        try:
            self.terminate()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return _log_tail(self.logfile, lines=10_000)

    def __repr__(self) -> str:
        return f"MosquittoServer({self.url!r}, pid={self.pid})"


# --------------------------------------------------------------------------- Prometheus


def find_prometheus() -> Path:
    for cand in ("/usr/bin/prometheus", shutil.which("prometheus")):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise BinaryNotFoundError(
        "prometheus not found (/usr/bin/prometheus); install the Debian 'prometheus' package"
    )


class PrometheusServer(_Server):
    """A private Prometheus scraping ``targets`` (``host:port``) every ``scrape_interval``.

    Ready in ~0.1 s, but Prometheus hands discovered targets to the scrape manager on a fixed
    5 s tick, so the first sample of a target shows up ~5-6 s after ``start()``. Targets may
    be down at start (a port you will listen on later): they are retried every interval.
    """

    def __init__(
        self,
        binary: Path,
        root: Path,
        port: int,
        targets: Sequence[str],
        scrape_interval: str,
        metrics_path: str,
    ) -> None:
        self.binary = binary
        self.root = root
        self.port = port
        self.host = HOST
        self.config = root / "prometheus.yml"
        self.logfile = root / "prometheus.log"
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.metrics_path = metrics_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @classmethod
    def start(
        cls,
        targets: Iterable[str],
        *,
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
        binary: Path | None = None,
        timeout: float = 30.0,
    ) -> PrometheusServer:
        binary = binary or find_prometheus()
        root = _make_tempdir("syncd-prom-")
        targets = list(targets)
        try:
            last_error: ServerStartError | None = None
            for _attempt in range(3):
                server = cls(binary, root, free_port(), targets, scrape_interval, metrics_path)
                server._write_config()
                try:
                    server._spawn(timeout)
                except ServerStartError as exc:
                    if not _port_conflict(str(exc)):
                        raise
                    last_error = exc
                    continue
                _register(server)
                return server
            assert last_error is not None
            raise last_error
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _write_config(self) -> None:
        # JSON is valid YAML: no PyYAML needed.  scrape_timeout must not exceed the interval.
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": "syncd",
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(self.config)

    def _spawn(self, timeout: float) -> None:
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=info",
                ],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._proc = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.02)
        code = proc.poll()
        _terminate(proc, signal.SIGKILL, 5)
        self._proc = None
        state = f"exited with {code}" if code is not None else f"not ready in {timeout}s"
        raise ServerStartError(
            f"prometheus on port {self.port} {state}; log tail:\n{_log_tail(self.logfile)}"
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_targets(self, targets: Iterable[str], timeout: float = 10.0) -> None:
        """Replace the scrape targets and reload the configuration (``/-/reload``).

        As after ``start()``, Prometheus 2.42 applies new targets on a fixed 5 s tick.
        """
        self.targets = list(targets)
        self._write_config()
        req = urllib.request.Request(f"{self.base_url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"prometheus reload failed: HTTP {resp.status}")

    def _api(self, path: str, params: dict[str, str], timeout: float) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"prometheus {path} failed: HTTP {exc.code}: {detail}") from exc
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} failed: {body}")
        return body["data"]

    def query(self, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result``.

        For a vector that is ``[{"metric": {...labels}, "value": [ts, "42"]}, ...]``.
        """
        data = self._api("/api/v1/query", {"query": expr}, timeout)
        result = data["result"]
        if data.get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        assert isinstance(result, list)
        return result

    def query_values(self, expr: str) -> list[float]:
        """The sample values of an instant query, as floats."""
        return [float(r["value"][1]) for r in self.query(expr)]

    def targets_health(self) -> list[dict[str, Any]]:
        """``/api/v1/targets`` active targets (``scrapeUrl``, ``health``, ``lastError``...)."""
        data = self._api("/api/v1/targets", {"state": "active"}, 10.0)
        active = data["activeTargets"]
        assert isinstance(active, list)
        return active

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[float]], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.1,
    ) -> list[float]:
        """Poll ``query_values(expr)`` until ``predicate(values)`` holds (blocking)."""
        deadline = time.monotonic() + timeout
        values: list[float] = []
        while True:
            values = self.query_values(expr)
            if predicate(values):
                return values
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{expr!r} still {values} after {timeout}s; targets: {self.targets_health()}"
                )
            time.sleep(interval)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        _unregister(self)
        try:
            if self._proc is not None:
                _terminate(self._proc, signal.SIGTERM, 10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"PrometheusServer({self.base_url!r}, targets={self.targets})"
