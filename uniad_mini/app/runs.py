"""Run folders that survive bad luck: one writer at a time, a checked --out, and one line when a run stops.

    RunLock(out)          RUN/uniad-mini.lock, created with O_EXCL and holding the writer's pid and host: a
                          second `train` / `demo` on the same folder refuses; a lock whose process is gone (a
                          run killed with SIGKILL, a crash) is taken over, saying so on stderr
    writable_folder(out)  creates --out, or a ValueError naming it when it is a file or cannot be written
    resume_hint(...)      what Ctrl-C leaves: the last complete epoch on disk and the command that continues it
    disk_error(e)         an OSError of a full, over-quota or read-only disk as one line, else None (a bug)

Checkpoints and results.json are written atomically elsewhere (model.UniAD.save, evaluation.write_results:
a temporary file, then os.replace), so whatever stops a run -- Ctrl-C, SIGKILL, a full disk -- the folder
holds the previous complete file or the new one, never half of one. docs/reliability.md lists every case.
"""
from __future__ import annotations
from ..errors import OptionError

import errno
import os
import socket
import sys
import time
from pathlib import Path

import torch

LOCK_NAME = "uniad-mini.lock"
DISK_ERRNOS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the disk is read-only"}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the line that says what is on disk and how to continue."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


def writable_folder(out) -> Path:
    """Create the folder `out` (and its parents), or a ValueError naming it when it cannot hold files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file, not a folder; pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".uniad-mini-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OptionError(f"--out {out} is not writable ({e.strerror or e}); pick a folder you can write to") from None
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_lock(path: Path) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "") when it is unreadable or empty (a writer died mid-write)."""
    try:
        pid, host = path.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


class RunLock:
    """`with RunLock(out):` -- hold RUN/uniad-mini.lock for the duration; released on any exit but SIGKILL."""

    def __init__(self, out):
        self.path = Path(out) / LOCK_NAME
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        return True

    def acquire(self) -> "RunLock":
        if not self._create():
            pid, host = _read_lock(self.path)
            if pid is None and _age(self.path) < 10:  # just created by a run that has not written its pid yet
                raise OptionError(f"{self.path.parent} is in use by another run (see {self.path}); pick another --out")
            if pid is not None and (host != socket.gethostname() or _alive(pid)):
                raise OptionError(f"{self.path.parent} is in use by another run (pid {pid} on {host}, see "
                                 f"{self.path}); wait for it to finish or pick another --out")
            print(f"uniad-mini: taking over the stale lock {self.path} (its process {pid} is gone)", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            if not self._create():  # another run took it over in between
                raise OptionError(f"{self.path.parent} is in use by another run (see {self.path}); pick another --out")
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def saved_epoch(checkpoint: Path) -> int | None:
    """The epoch stored in a checkpoint on disk, or None when there is none (or it is unreadable)."""
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["train_state"]["epoch"])
    except Exception:  # noqa: BLE001 -- only a hint for the user: anything unreadable counts as nothing saved
        return None


def resume_hint(checkpoint: Path, resume_command: str) -> str:
    """The line printed on Ctrl-C during training: what is on disk, and how to continue."""
    epoch = saved_epoch(checkpoint)
    if epoch is None:
        return "no epoch was complete, nothing was saved; start again without --resume"
    return f"epoch {epoch} is complete in {checkpoint}; continue with: {resume_command}"


def disk_error(e: OSError) -> str | None:
    """One line for a full / over-quota / read-only disk (nothing half-written stays: saves are atomic)."""
    if e.errno not in DISK_ERRNOS:
        return None
    where = f" writing {e.filename}" if e.filename else ""
    return f"{DISK_ERRNOS[e.errno]}{where}; the earlier files are untouched -- free space and run again"
