"""The sandbox's Python kernel: runs cells for the supervisor, one at a time.

Started by the supervisor with ``python -u -c <this source>`` in its own session, with its
control pipe on fds 3 (requests in) and 4 (replies out). Each request is one JSON line
``{"code", "echo", "nonce"}``; each reply one JSON line ``{"op": "done", "nonce", "status",
"exc_type", "exc_message", "traceback"}`` with status ``ok``, ``error`` or ``interrupted``.
Variables live in one namespace across cells. Stdlib only.
"""

import ast
import contextlib
import io
import json
import linecache
import os
import signal
import sys
import traceback

# The control pipe arrives on fds 3/4; it moves to non-inheritable descriptors so that no
# program the cell starts receives it.
CTL_IN = os.fdopen(os.dup(3), "rb", buffering=0)
CTL_OUT = os.dup(4)
os.close(3)
os.close(4)
SAVED_STDOUT = os.dup(1)
SAVED_STDERR = os.dup(2)
KERNEL_PID = os.getpid()
KEEP = int(os.environ.get("SPO_OUTPUT_KEEP", "8192"))
EXC_TYPE_KEEP = 128
DEVNULL = open(os.devnull)  # noqa: SIM115 - stdin of every cell, for the kernel's life
NS = {"__name__": "__main__", "__builtins__": __builtins__}
COUNTER = [0]
os.chdir(os.environ["SPO_WORKDIR"])
with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")  # the kernel, not the supervisor, is the OOM killer's first choice


def reply(obj):
    if os.getpid() != KERNEL_PID:
        os._exit(0)  # a process the cell forked must never answer for the kernel
    # The leading newline ends any partial line the cell wrote to this pipe before.
    data = ("\n" + json.dumps(obj) + "\n").encode()
    view = memoryview(data)
    while view:
        n = os.write(CTL_OUT, view)
        view = view[n:]


def read_request():
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = CTL_IN.read(65536)
        if not chunk:
            sys.exit(0)
        buf += chunk
    return json.loads(buf)


def clip(text, keep):
    if text is None or len(text) <= 2 * keep:
        return text
    return f"{text[:keep]}\n...[{len(text) - 2 * keep} characters truncated]...\n{text[-keep:]}"


def restore_stdio():
    # User code may close or redirect fds 1/2 or replace sys.stdout; each cell starts clean.
    os.dup2(SAVED_STDOUT, 1)
    os.dup2(SAVED_STDERR, 2)
    # Unbuffered all the way down: nothing a failed write leaves behind can surface later.
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.stdin = DEVNULL  # opened once: a cell that exhausts fds must not break the kernel
    signal.signal(signal.SIGINT, signal.default_int_handler)


def user_traceback(exc):
    tb = exc.__traceback__
    # Drop the kernel's own frames: the model should see only its code.
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def compile_cell(code, echo):
    COUNTER[0] += 1
    name = f"<cell-{COUNTER[0]}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    tree = ast.parse(code, name, "exec")
    last = None
    if echo and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, name, "exec")
    return body, (compile(last, name, "eval") if last is not None else None)


def run(req):
    restore_stdio()
    result = {
        "op": "done",
        "nonce": req.get("nonce"),
        "status": "ok",
        "exc_type": None,
        "exc_message": None,
        "traceback": None,
    }
    try:
        body, last = compile_cell(req["code"], req.get("echo", False))
        exec(body, NS)
        if last is not None:
            value = eval(last, NS)
            if value is not None:
                print(repr(value))
    except BaseException as exc:  # the cell's failure is the result, whatever it is
        result["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
        result["exc_type"] = clip(type(exc).__name__, EXC_TYPE_KEEP)
        try:
            result["exc_message"] = clip(str(exc), KEEP)
            result["traceback"] = clip(user_traceback(exc), KEEP)
        except BaseException:  # an exception whose text itself raises
            result["exc_message"] = "(the exception could not be printed)"
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    reply(result)


reply({"op": "ready", "pid": os.getpid()})
while True:
    run(read_request())
