"""The writer lock of a store: one writing job per store at a time.

Two ``compress-cache build`` processes writing into one ``--out`` would mix their shards under
one manifest. So every writer of a local store holds ``STORE/.writer.lock``:

* the lock file holds JSON ``{"host", "pid", "fingerprint", "job", "since"}`` of the writer
  that took it first, and every writer keeps a *shared* ``flock`` on it while it writes;
* a writer that finds the lock held (a non-blocking exclusive ``flock`` fails) joins only when
  it belongs to the same job with the same fingerprint: the ranks of one ``torchrun`` build
  (same ``TORCHELASTIC_RUN_ID`` and ``MASTER_ADDR:MASTER_PORT``; the master port is bound by
  the running job, so two live jobs never share it), or the same process (whose layout and
  fingerprint checks are the store's own). With ``exclusive`` (replacing a store) only the
  same process may join. Anything else gets
  ``StoreLockedError("cache/train is being written by pid 1234 on host X ...")``;
* the decision (test exclusive, write the holder, share) is made under a brief exclusive
  ``flock`` of ``STORE/.writer.guard``, so two writers can never both think they are first.

The kernel drops a ``flock`` when its process dies, so a killed writer never leaves a stale
lock. ``flock`` works on local disks and on NFS (Linux emulates it with POSIX locks there).
Stores on fsspec URLs other than ``file://`` and ``memory://`` stores are not locked: run one
writing job per such store (memory stores are private to their process anyway).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import IO, Any

from storage.errors import StoreLockedError

LOCK_NAME = ".writer.lock"
GUARD_NAME = ".writer.guard"
LOCK_FILES = (LOCK_NAME, GUARD_NAME)


def current_job() -> str | None:
    """The identity shared by every rank of this process's distributed job, or ``None`` outside one."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port) and not run_id:
        return None
    return f"{run_id or '-'}@{addr or '-'}:{port or '-'}"


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` runs on this host (or may: permission denied counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class WriterLock:
    """The lock one writer holds on the store directory ``root`` until ``release``.

    Args:
        root: the store directory (created by the caller).
        label: how messages name the store (the path the user gave).
        fingerprint: identity of what is written; a joining rank must have the same.
        exclusive: join only a lock this same process holds (to replace the store's contents).
    Raises:
        StoreLockedError: another live job (or the same job with another fingerprint) writes it.
    """

    def __init__(self, root: str, label: str, fingerprint: str | None, exclusive: bool = False) -> None:
        self.root = root
        self.label = label
        self.exclusive = exclusive
        self.first = False
        self._file: IO[bytes] | None = None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "fingerprint": fingerprint, "job": current_job(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(os.path.join(root, GUARD_NAME), "a+b") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                self._file = self._acquire(me)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def _acquire(self, me: dict[str, Any]) -> IO[bytes]:
        f = open(os.path.join(self.root, LOCK_NAME), "a+b")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(f)
                if not self._may_join(holder, me):
                    raise StoreLockedError(self._message(holder, me)) from None
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # other holders share it: cannot block
                return f
            self.first = True
            f.seek(0)
            f.truncate()
            f.write(json.dumps(me).encode())
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_SH)  # safe: every other writer waits on the guard meanwhile
            return f
        except BaseException:
            f.close()
            raise

    @staticmethod
    def _holder(f: IO[bytes]) -> dict[str, Any]:
        f.seek(0)
        try:
            obj = json.loads(f.read() or b"{}")
        except ValueError:
            obj = {}
        return obj if isinstance(obj, dict) else {}

    def _may_join(self, holder: dict[str, Any], me: dict[str, Any]) -> bool:
        if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
            return True  # this process: the store checks layout and fingerprint itself
        if self.exclusive or holder.get("fingerprint") != me["fingerprint"]:
            return False
        return me["job"] is not None and holder.get("job") == me["job"]

    def _message(self, holder: dict[str, Any], me: dict[str, Any]) -> str:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = f" since {holder['since']}" if holder.get("since") else ""
        why = ""
        if self.exclusive:
            why = " (refusing to replace a store that another process is writing)"
        elif holder.get("job") is not None and holder.get("job") == me["job"]:
            why = f" (same job, but with fingerprint {holder.get('fingerprint')!r}, not {me['fingerprint']!r})"
        return (
            f"{self.label} is being written by {who}{since}{why}; wait for it to finish or stop it, "
            "or write to another path (two writers would mix their rows in one store)"
        )

    def release(self) -> None:
        """Drop this writer's share of the lock (idempotent)."""
        if self._file is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            finally:
                self._file.close()
                self._file = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass
