"""A throw-away PostgreSQL server for the audit store tests, from Debian's packages (``postgresql``).

``make test`` installs the package when it runs as root; elsewhere the tests that need a server skip and say
why. The server listens on 127.0.0.1 at a free port with trust authentication, its data in a temporary
directory; as root it runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def why_unavailable() -> str | None:
    """Why no server can be started here (None when one can)."""
    if find_bin("initdb") is None or find_bin("pg_ctl") is None:
        return ("PostgreSQL server binaries not found (Debian package 'postgresql'; `make test` installs it when "
                "run as root)")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (requirements.txt)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path):
        """The server's files under ``root``; run as root, in a directory of the server user's own under the system
        temp folder instead (removed by ``stop``): pytest keeps its temp tree private (0700) and resets it when another
        pytest session starts, which would cut the server user off from a directory inside it."""
        self._as_user: list[str] = []
        self._own_root = os.geteuid() == 0
        if self._own_root:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            root = tempfile.mkdtemp(prefix="cmdr_test_pg_")
        self.root = Path(root)
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.port = _free_port()

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(self._as_user + list(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self._as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
            os.chmod(self.root, 0o755)
        try:
            self._run(find_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                      "-E", "UTF8")
            return self.start_again()
        except Exception:
            self.stop()
            raise

    def start_again(self) -> "PostgresServer":
        """Start the server (again, after ``stop_now``) on the same port and data."""
        self._run(find_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "server.log"),
                  "-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1", "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop_now(self) -> None:
        """Stop the server (clients see it go down); ``start_again`` brings it back."""
        self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001 - best effort at the end of the session
            pass
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
