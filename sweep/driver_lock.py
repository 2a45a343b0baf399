"""One driver per results folder: a sweep (or a tuning run) holds OUT/driver-lock.json while it
runs, so a second driver started on the same OUT (a command launched twice, a `--resume` typed
while the first still runs) is refused instead of training every trial a second time into the
same run folders.

The lock is a small JSON record written through `protocol.storage.Storage`, so a local folder and
a bucket behave alike: who holds it (host, process id, start time, command) and a heartbeat the
holder rewrites every `HEARTBEAT_S`. A record is stale, and taken over, when its heartbeat is
older than `STALE_AFTER_S` (a driver on another machine that died or lost its network) or, on the
same host and in the same process namespace, when its process has exited (a killed driver
followed by `--resume` need not wait). Storage offers no compare-and-swap (pyarrow's S3 client
cannot send a conditional PUT), so taking the lock is write, wait `settle_s`, read back: of two
drivers that both found OUT free, the one whose record is read back holds it; the other is
refused. Released (deleted) when the driver finishes; a nested sweep in the same process (tune's
dependencies) shares its caller's lock.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from errors import UserError
from protocol.storage import Storage

log = logging.getLogger(__name__)

LOCK_FILE = "driver-lock.json"
HEARTBEAT_S = 30.0
# Four missed heartbeats: a driver stalled by a slow bucket or a busy head is not mistaken for a
# dead one, and a dead one on another machine blocks OUT for two minutes at most.
STALE_AFTER_S = 120.0


class OutInUse(UserError):
    """OUT is being written by another running driver (user-facing: one line, exit 2)."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid
    it tells a live driver from a later process that was given the same pid. None off Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _alive_here(record: dict) -> bool | None:
    """Whether the record's process runs, when this process can tell (same host and process
    namespace); None when it cannot."""
    if record.get("host") != socket.gethostname() or record.get("pid_namespace") != _pid_namespace():
        return None
    pid = int(record.get("pid", -1))
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # exited, not yet reaped by its parent
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    recorded = record.get("process_start")
    return recorded is None or _process_start(pid) in (None, recorded)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(record: dict, now: float | None = None) -> str:
    """Who holds a lock record, for the refusal's one line."""
    if not record:
        return "one that took it at the same moment"
    now = time.time() if now is None else now
    beat = now - float(record.get("heartbeat_at", 0))
    return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started "
            f"{_when(float(record.get('started_at', 0)))}, last heartbeat {beat:.0f} s ago"
            + (f": {record['command']}" if record.get("command") else ""))


# The locks this process holds: OUT's URI -> [the DriverLock that took it, how many holds].
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


class DriverLock:
    """The lock of one OUT for this driver. Use as a context manager around the whole sweep."""

    def __init__(self, out: str | Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                 settle_s: float | None = None):
        self.storage = Storage(out)
        self.path = self.storage.path(LOCK_FILE)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        # Longer than any plausible gap between a driver's check and its write: a bucket's PUT
        # takes a round trip, a rename on a local disk none.
        self.settle_s = settle_s if settle_s is not None else (0.5 if self.storage.is_local else 2.0)
        self.token = uuid.uuid4().hex
        self.record: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the record on storage ---
    def read(self) -> dict | None:
        """The record in OUT, or None when there is none (or it cannot be read: it is then no lock)."""
        if not self.storage.exists(self.path):
            return None
        try:
            record = self.storage.read_json(self.path)
        except (ValueError, OSError):
            return None
        return record if isinstance(record, dict) else None

    def is_stale(self, record: dict, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        alive = _alive_here(record)
        if alive is not None:
            return not alive
        return now - float(record.get("heartbeat_at", 0)) > self.stale_after_s

    def _refusal(self, record: dict) -> OutInUse:
        return OutInUse(
            f"--out {self.storage.uri()} is in use by another cxrsweep driver ({describe(record)}); wait for it to "
            f"finish or stop it (its lock, {self.storage.uri(LOCK_FILE)}, is taken over once that driver has "
            f"exited on this host, or {self.stale_after_s:.0f} s after its last heartbeat)")

    # --- taking and giving back ---
    def acquire(self) -> None:
        """Take the lock, or join this process's hold on it (a sweep nested in another)."""
        with _HELD_GUARD:
            held = _HELD.get(self.storage.uri())
            if held is not None:
                held[1] += 1
                return
        current = self.read()
        if current is not None and not self.is_stale(current):
            raise self._refusal(current)
        if current is not None:
            log.warning("taking over the lock of a driver that is gone (%s)", describe(current))
        now = time.time()
        self.record = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_namespace": _pid_namespace(), "process_start": _process_start(os.getpid()),
                       "started_at": now, "heartbeat_at": now, "command": " ".join(sys.argv)}
        self.storage.write_json(self.path, self.record)
        time.sleep(self.settle_s)
        read_back = self.read()
        if read_back is None or read_back.get("token") != self.token:
            raise self._refusal(read_back or {})
        with _HELD_GUARD:
            _HELD[self.storage.uri()] = [self, 1]
        self._thread = threading.Thread(target=self._beat, name="cxrsweep-driver-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Leave this process's hold; the last one out deletes the record (if it is still ours)."""
        with _HELD_GUARD:
            held = _HELD.get(self.storage.uri())
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            _HELD.pop(self.storage.uri())
        held[0]._give_back()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.read()
                if current is None or current.get("token") != self.token:
                    log.warning("this driver's lock on %s was taken over (%s): another driver now writes the "
                                "same results folder", self.storage.uri(),
                                describe(current) if current else "the record is gone")
                    return
                self.record["heartbeat_at"] = time.time()
                self.storage.write_json(self.path, self.record)
            except Exception as exc:  # a bucket that hiccups: the next beat tries again
                log.warning("could not renew the driver lock %s: %s", self.path, exc)

    def _give_back(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self.read()
        if current is not None and current.get("token") == self.token:
            self.storage.fs.delete_file(self.path)

    def __enter__(self) -> "DriverLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
