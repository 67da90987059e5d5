"""The grader's student process (implements no part of the paper): one submission's functions run here, on the inputs
the instructor's tests send, with nothing of the instructor's within reach.

The grader (graded_tests/conftest.py) starts it as `python -I grader_worker.py` in a folder that holds only this file
and grader_probes.py (probes.py: public stand-ins) and sends the setup on stdin. The order is what makes it safe:

    1. torch and numpy are imported and the by-hand guard is warmed up;
    2. an audit hook is installed (Python offers no way to remove one): from then on, opening or listing any file of
       the instructor's project or of the grader's folder (or anything outside Python's own folders), starting or
       signalling a process and loading a C library raise PermissionError, and files may be written only in this
       process's scratch folder;
    3. only then is the submission's package imported: its `__init__.py` runs here, never in the grader's process,
       whose collection, reporting and scoring it therefore cannot touch;
    4. calls are served: a request (torch.save bytes: the target, its arguments, the guard's settings) gets back the
       result, or the error with the submission's own file and line. The grader reads every answer with
       torch.load(weights_only=True), so an answer cannot run code there.

The hidden tests' code and expected values stay in the grader's process; only the inputs of a call come here.
"""
import io
import os
import signal
import struct
import sys
import traceback

import numpy as np
import torch

if __name__ == "__main__":  # the student process: grader_probes lies beside this file, which python -I leaves off
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import grader_probes as probes
else:  # imported as uniad_mini.course.worker
    from . import probes


def read_message(stream) -> dict:
    size = stream.read(8)
    if len(size) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", size)
    return torch.load(io.BytesIO(stream.read(n)), weights_only=False)  # from the grader: trusted


def write_message(stream, message: dict) -> None:
    buf = io.BytesIO()
    torch.save(message, buf)
    stream.write(struct.pack("<Q", buf.tell()) + buf.getvalue())
    stream.flush()


# ---- what a part may reach ----------------------------------------------------------------------------------------

REFUSED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "os.symlink", "os.link", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "ctypes.dlopen",
                  "ctypes.dlsym", "ctypes.call_function", "socket.connect", "socket.bind", "pty.spawn", "os.kill",
                  "os.killpg", "signal.pthread_kill")
READABLE = ("/dev/null", "/dev/urandom", "/proc/self/", "/proc/cpuinfo", "/proc/meminfo", "/sys/")


class Reach:
    """The audit hook: what this process may open once sealed."""

    def __init__(self, own: list[str], denied: list[str], scratch: str):
        self.own = [os.path.join(os.path.realpath(p), "") for p in own]  # the tree, this folder, scratch
        self.denied = [os.path.join(os.path.realpath(p), "") for p in denied]
        self.scratch = os.path.join(os.path.realpath(scratch), "")
        self.system = [os.path.join(os.path.realpath(p), "") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
        self.sealed = False

    def allowed(self, path, writing: bool) -> bool:
        if isinstance(path, int):
            return True
        real = os.path.realpath(os.fsdecode(path))
        inside = lambda roots: any(real == r[:-1] or real.startswith(r) for r in roots)  # noqa: E731
        if writing:
            return real == "/dev/null" or inside([self.scratch])
        if inside(self.own):
            return True
        if inside(self.denied):
            return False
        return inside(self.system) or any(real == r or real.startswith(r) for r in READABLE)

    def __call__(self, event, args):
        if not self.sealed:
            return
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if path is not None and not self.allowed(path, writing):
                raise PermissionError(f"the grader does not let a part open {os.fsdecode(path)}")
        elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            if not self.allowed(args[0], False):
                raise PermissionError(f"the grader does not let a part list {os.fsdecode(args[0])}")
        elif event.startswith(REFUSED_EVENTS):
            raise PermissionError(f"the grader does not let a part call {event}")


def seal(setup: dict) -> Reach:
    """Install the audit hook and drop every path to the instructor's package from the import system."""
    here = os.path.dirname(os.path.abspath(__file__))
    reach = Reach([setup["tree"], here, setup["scratch"]], setup["denied"], setup["scratch"])
    sys.addaudithook(reach)
    denied = reach.denied
    sys.path[:] = [setup["tree"], here] + [p for p in sys.path if p and not any(
        os.path.join(os.path.realpath(p), "").startswith(d) for d in denied)]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()
                        and "editable" not in getattr(f, "__name__", "").lower()]
    for name in [m for m in sys.modules if m == "uniad_mini" or m.startswith("uniad_mini.")]:
        del sys.modules[name]
    reach.sealed = True
    return reach


# ---- one call -----------------------------------------------------------------------------------------------------


class Timeout(BaseException):
    """A call ran past its time (a BaseException, so a part's `except Exception` does not swallow it)."""


def target_of(name: str):
    """"probes.loop_mask" -> the stand-in; "transformer.EncoderLayer.forward" -> the submission's function."""
    import importlib

    if name.startswith("probes."):
        return getattr(probes, name.split(".", 1)[1])
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module("uniad_mini." + ".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("uniad_mini"):
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"the package has no {name}")


def where(tb, tree: str) -> str:
    """The submission's innermost frame of a traceback, as "uniad_mini/x.py, line N" ("" when none)."""
    found = ""
    for frame, line in traceback.walk_tb(tb):
        path = os.path.realpath(frame.f_code.co_filename)
        if path.startswith(os.path.join(os.path.realpath(tree), "")):
            found = f"{os.path.relpath(path, tree)}, line {line}"
    return found


def error_answer(e: BaseException, tree: str, guard) -> dict:
    if guard.refused:  # a refusal the part caught and went on from still counts
        return {"ok": False, "kind": "ByHand", "message": guard.refused, "where": ""}
    at = where(e.__traceback__, tree)
    if isinstance(e, SyntaxError) and e.filename:
        at = f"{os.path.relpath(os.path.realpath(e.filename), tree)}, line {e.lineno}"
    return {"ok": False, "kind": type(e).__name__, "message": str(e)[:1500], "where": at}


def run(request: dict, tree: str, guard) -> dict:
    fn = target_of(request["target"])
    args, kwargs = request.get("args", ()), request.get("kwargs", {})
    undo = probes.patch(request.get("patch") or {})
    if request.get("seed") is not None:
        torch.manual_seed(request["seed"])
        np.random.seed(request["seed"])

    def ring(signum, frame):
        raise Timeout(f"this test ran past {request.get('budget', request['timeout']):g} s (an endless loop?)")

    signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, request["timeout"])
    try:
        with guard.on(request.get("why", ""), request.get("project", ()), request.get("lines")):
            result = fn(*args, **kwargs)
            grads = probes.gradients(result, args, request["grad"]) if request.get("grad") else None
    except BaseException as e:  # noqa: B902 (every failure of the part is an answer, not a crash of this process)
        return error_answer(e, tree, guard)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        undo()
    if guard.refused:
        return {"ok": False, "kind": "ByHand", "message": guard.refused, "where": ""}
    answer = {"ok": True, "result": probes.plain(result), "lines": guard.lines}
    if grads is not None:
        answer["grads"] = probes.plain(grads)
    if request.get("after"):
        answer["args"] = probes.plain(list(args))
    return answer


def main() -> int:
    channel_in = os.fdopen(os.dup(0), "rb")
    channel_out = os.fdopen(os.dup(1), "wb")
    setup = read_message(channel_in)
    log = os.open(os.path.join(setup["scratch"], "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1), os.dup2(log, 2)  # what a part prints goes to a file, never into the channel
    os.close(log)
    guard = probes.Guard(setup["tree"])
    probes.target_of = target_of
    seal(setup)
    try:
        import uniad_mini  # the submission's: its __init__.py runs now, sealed

        started = {"ok": True, "package": os.path.realpath(uniad_mini.__file__ or "")}
    except BaseException as e:  # noqa: B902
        started = error_answer(e, setup["tree"], guard)
    write_message(channel_out, started)
    while True:
        try:
            request = read_message(channel_in)
        except EOFError:
            return 0
        try:
            answer = run(request, setup["tree"], guard)
        except BaseException as e:  # noqa: B902 (a target that does not exist, an argument that does not load)
            answer = error_answer(e, setup["tree"], guard)
        write_message(channel_out, answer)


if __name__ == "__main__":
    sys.exit(main())
