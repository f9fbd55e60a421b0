"""A throwaway PostgreSQL cluster for tests and benchmarks (``initdb`` + ``pg_ctl``).

Unix socket only, in a temporary folder, trust authentication, ``fsync=off``. Missing
PostgreSQL or the ``psycopg`` driver skips the test (fails it when ``CI`` is set).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.needs import missing
from tests.node_harness import free_port


def _postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: PATH first, then Debian's versioned folders."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                        else 0)
    return candidates[-1].parent if candidates else None


def _as_cluster_owner() -> list[str]:
    """The command prefix that runs the server as a user it accepts (it refuses root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing("running as root and there is no 'postgres' user to own the test cluster")
    runuser = shutil.which("runuser")
    if runuser is None:
        missing("running as root and runuser is missing: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")


@dataclass
class PostgresServer:
    """A running throwaway cluster that a test may stop and start again (an outage)."""

    url: str
    bindir: Path
    data: Path
    folder: Path
    port: int
    prefix: list[str]

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        _run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
              str(self.folder / "server.log"), "-w", "-t", "30", "-o",
              f"-c listen_addresses='' -k {self.folder} -p {self.port} -c fsync=off", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, as a restart does)."""
        _run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode,
              "-w", "stop"])


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster (superuser ``bpr``, database ``postgres``), started."""
    if importlib.util.find_spec("psycopg") is None:
        missing("PostgreSQL driver missing: pip install 'psycopg[binary]' (the "
                "postgresql+psycopg URLs need it)")
    bindir = _postgres_bin()
    if bindir is None:
        missing("PostgreSQL is not installed (no initdb; Debian package 'postgresql')")
    prefix = _as_cluster_owner()
    # Not pytest's tmp_path: its folders are private to our user, which the server may not be,
    # and the Unix socket path must stay under ~100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="bpr-pg-"))
    if prefix:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    server = PostgresServer(f"postgresql+psycopg://bpr@/postgres?host={folder}&port={port}",
                            bindir, data, folder, port, prefix)
    try:
        # C.UTF-8: byte (code point) order and Unicode case folding, as the node's SQLite.
        _run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "bpr", "--auth=trust",
              "--locale=C.UTF-8", "-E", "UTF8", "--no-sync"])
        server.start()
        try:
            yield server
        finally:
            with suppress(RuntimeError):  # a test may have left it stopped
                server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """The URL of a fresh PostgreSQL cluster's ``postgres`` database (superuser ``bpr``)."""
    with postgres_server() as server:
        yield server.url


@contextmanager
def fresh_database(cluster: str) -> Iterator[str]:
    """A new, empty database of the cluster, dropped afterwards; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    # no pool: a test may restart the server in between
    admin = create_engine(cluster, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(cluster).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
