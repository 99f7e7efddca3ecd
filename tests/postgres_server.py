"""A real PostgreSQL server for the tests that run on both databases.

``$PRODUCTLENS_TEST_POSTGRES`` (an admin URL such as
``postgresql://postgres@127.0.0.1:5432/postgres``) points at a server you run;
otherwise a private server is started for the test session from the PostgreSQL
binaries on this machine (Debian's ``postgresql`` package), on loopback and a free
port, as the ``postgres`` user when the tests run as root (initdb refuses root),
and removed afterwards. Every test gets its own new database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

NO_SERVER = ("the PostgreSQL tests need PostgreSQL's server binaries (Debian/Ubuntu: apt-get install postgresql) "
             "or $PRODUCTLENS_TEST_POSTGRES set to an admin URL of a server")


def _binaries() -> Path | None:
    for initdb in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]:
        if initdb and Path(initdb).is_file():
            return Path(initdb).resolve().parent
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """Makes and drops one database per test on a running server."""

    def __init__(self, admin_url: str, stop=None):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self.admin_url = make_url(admin_url).set(drivername="postgresql+psycopg")
        self._admin = create_engine(self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._stop = stop

    def new_database(self) -> str:
        from sqlalchemy import text

        name = f"productlens_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        self._admin.dispose()
        if self._stop:
            self._stop()


def start() -> PostgresServer:
    """The server named by ``$PRODUCTLENS_TEST_POSTGRES``, else a private one; raises RuntimeError if neither."""
    if os.environ.get("PRODUCTLENS_TEST_POSTGRES"):
        return PostgresServer(os.environ["PRODUCTLENS_TEST_POSTGRES"])
    binaries = _binaries()
    if binaries is None:
        raise RuntimeError(NO_SERVER)
    root = Path(tempfile.mkdtemp(prefix="productlens-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*command: str) -> None:
        result = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {(result.stderr or result.stdout).strip()[-500:]}")

    run(str(binaries / "initdb"), "-D", str(data), "-U", "productlens", "-A", "trust", "-E", "UTF8", "--no-sync")
    # fsync off: the server's own crash safety is PostgreSQL's business, not these tests'.
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")

    def stop() -> None:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    server = PostgresServer(f"postgresql://productlens@127.0.0.1:{port}/postgres", stop)
    deadline = time.time() + 30
    while True:  # pg_ctl -w waits for the socket; the first connection proves it
        try:
            server.drop("postgresql://x@h/never_created")
            return server
        except Exception:
            if time.time() > deadline:
                stop()
                raise
            time.sleep(0.2)
