"""A private MariaDB server for tests: its own data folder, socket and port on 127.0.0.1."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pymysql

SCHEMA = """
CREATE TABLE vm_template (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  unique_name VARCHAR(255) NOT NULL,
  name VARCHAR(255) NOT NULL,
  uuid VARCHAR(40),
  url VARCHAR(255),
  type VARCHAR(32) NOT NULL,
  hypervisor_type VARCHAR(32),
  removed DATETIME NULL
)
"""
USER, PASSWORD = "cloud", "cloud-secret"
# (id, type, hypervisor_type, removed): one SYSTEM template per hypervisor, a USER one and a removed one.
ROWS = [(2, "SYSTEM", "XenServer", None), (3, "SYSTEM", "KVM", None), (4, "USER", "KVM", None),
        (5, "SYSTEM", "VMware", None), (6, "SYSTEM", "Hyperv", None), (8, "SYSTEM", "KVM", "2024-01-01")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_binary() -> str | None:
    return shutil.which("mariadbd") or (shutil.which("mysqld") if Path("/usr/sbin/mysqld").exists() else None) or (
        "/usr/sbin/mariadbd" if Path("/usr/sbin/mariadbd").exists() else None)


@contextmanager
def mariadb_server(folder: Path) -> Iterator[dict[str, object]]:
    data, sock, port = folder / "data", folder / "mysqld.sock", _free_port()
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)
    process = subprocess.Popen([server_binary() or "mariadbd", "--no-defaults", f"--datadir={data}",
                                f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1", "--user=root",
                                f"--pid-file={folder / 'mysqld.pid'}", f"--log-error={folder / 'error.log'}"])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                admin = pymysql.connect(unix_socket=str(sock), user="root")
                break
            except pymysql.MySQLError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError((folder / "error.log").read_text()) from None
                time.sleep(0.3)
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE cloud")
            cursor.execute(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute(f"GRANT ALL ON cloud.* TO '{USER}'@'%'")
            cursor.execute("USE cloud")
            cursor.execute(SCHEMA)
        admin.commit()
        admin.close()
        yield {"host": "127.0.0.1", "port": port, "user": USER, "password": PASSWORD, "socket": str(sock)}
    finally:
        process.terminate()
        process.wait(timeout=60)


_shared: dict[str, object] = {}
_shared_stack = ExitStack()


def shared_server() -> dict[str, object]:
    """One server for the whole test process, started by the first test module that asks and stopped (its
    folder removed) when Python exits: each seeding test module would otherwise start its own."""
    if not _shared:
        folder = Path(tempfile.mkdtemp(prefix="sysvm-mariadb-"))
        atexit.register(_shared_stack.close)
        _shared_stack.callback(shutil.rmtree, folder, True)
        _shared.update(_shared_stack.enter_context(mariadb_server(folder)))
    return _shared


def cloud_connection(server: dict[str, object]) -> pymysql.connections.Connection:
    return pymysql.connect(host=server["host"], port=server["port"], user=server["user"],  # type: ignore[arg-type]
                           password=server["password"], database="cloud", autocommit=True)


def reset_templates(connection: pymysql.connections.Connection) -> None:
    """vm_template as ROWS says, no uuid or url yet, and no trigger left over by a test."""
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS refuse_update")
        cursor.execute("DELETE FROM vm_template")
        for id_, kind, hypervisor, removed in ROWS:
            cursor.execute("INSERT INTO vm_template (id, unique_name, name, type, hypervisor_type, removed) "
                           "VALUES (%s, %s, %s, %s, %s, %s)", (id_, f"t{id_}", f"t{id_}", kind, hypervisor, removed))
