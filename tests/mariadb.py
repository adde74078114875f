"""A private MariaDB server for tests: its own data folder, socket and port on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
