"""A throwaway PostgreSQL cluster from the machine's own binaries (initdb, pg_ctl).

initdb refuses to run as root, so as root the cluster is created and run by an
unprivileged system user (created if missing). The server listens only on a Unix
socket inside its data folder.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from crmdb.errors import CrmdbError

SYSTEM_USER = "crmdb_pg"
# Durability is pointless for a test cluster; these make it several times faster.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_bin_dir(explicit: str | None = None) -> Path:
    """PG_BIN, else the directory of `pg_ctl` on PATH."""
    candidate = explicit or os.environ.get("PG_BIN")
    if candidate:
        path = Path(candidate)
    else:
        found = shutil.which("pg_ctl")
        if not found:
            raise CrmdbError("no pg_ctl on PATH; set PG_BIN to PostgreSQL's bin directory")
        path = Path(found).resolve().parent
    if not (path / "initdb").exists():
        raise CrmdbError(f"no initdb in {path} (PG_BIN); point it at PostgreSQL's bin directory")
    return path


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


class LocalServer:
    """initdb + pg_ctl start in a temporary folder; stop() removes it."""

    def __init__(self, bin_dir: Path, settings: tuple[str, ...] = FAST_SETTINGS) -> None:
        self.bin_dir = bin_dir
        self.settings = settings
        self.root = Path(tempfile.mkdtemp(prefix="crmdb-pg-"))
        self.data_dir = self.root / "data"
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.user = _ensure_system_user()
            self.root.chmod(0o755)  # the socket lives here; root and the server user reach it
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str) -> None:
        # Files, not pipes: the postmaster pg_ctl starts inherits them and would keep
        # a pipe open forever.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                [str(self.bin_dir / args[0]), *args[1:]],
                user=self.user.pw_uid if self.user else None,
                group=self.user.pw_gid if self.user else None,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                out.seek(0)
                raise CrmdbError(f"{args[0]} failed: {out.read().strip()}")

    def start(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        options = " ".join(
            ["-c listen_addresses=''", f"-k {self.root}", *(f"-c {s}" for s in self.settings)]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def uri(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{dbname}?host={self.root}"

    def restart(self) -> None:
        """Stop and start the server (fast shutdown), keeping its data."""
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-m",
            "fast",
            "-w",
            "restart",
        )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
