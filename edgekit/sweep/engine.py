"""Where a sweep's jobs run: Ray, local by default, a cluster by address. The only module that imports Ray.

Local: `ray.init(address="local")` starts a private instance with the worker count as its CPUs, no dashboard, every
socket asked on loopback (`_node_ip_address="127.0.0.1"`; see the README, "Scaling out", for what Ray still binds
outside a network namespace). `--address HOST:PORT|auto` joins an existing cluster instead (auto: RAY_ADDRESS or
the cluster this machine runs); Ray's token authentication stays as the cluster has it. Each task reserves its
share of the CPUs and its ONNX Runtime uses exactly that many intra-op threads, so N workers never oversubscribe
the cores. A task whose worker process dies is retried by Ray (`max_retries`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from edgekit.core.errors import BadInput, EnvironmentUnavailable, one_line

TASK_RETRIES = 2  # a worker that dies: its task runs again on a new worker, twice at most


def require_ray():
    """Ray, or exit 3 with how to get it. Its C++ core's warnings at import (no route out of a network namespace,
    ...) are kept off the user's stderr."""
    from edgekit.runtimes.ort import captured_stderr

    try:
        with captured_stderr():
            import ray
    except ImportError:
        raise EnvironmentUnavailable("edgekit sweep runs its jobs on Ray, which is not installed here",
                                     hint="pip install 'edgekit[sweep]' (make setup installs it)") from None
    return ray


@dataclass
class Cluster:
    """A started (or joined) Ray instance and how the sweep uses it."""

    address: str  # "local" or what was joined
    workers: int  # jobs at once
    threads: int  # CPUs reserved by each task, and its ORT intra-op threads
    nodes: int

    def describe(self) -> str:
        where = "a local Ray instance" if self.address == "local" else f"the Ray cluster at {self.address}"
        return f"{self.workers} worker(s) x {self.threads} thread(s) on {where}, {self.nodes} node(s)"


def start(address: str | None, workers: int | None) -> Cluster:
    ray = require_ray()
    cores = os.cpu_count() or 1
    if workers is not None and not 1 <= workers <= 1024:
        raise BadInput(f"--workers must be 1 to 1024, got {workers}")
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    from edgekit.runtimes.ort import captured_stderr

    log: list[str] = []
    handlers = _python_handlers()
    try:
        with captured_stderr() as log:
            _init(ray, address, workers, cores, quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        _stop_quietly()
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
        said = " ".join(ln for ln in "".join(log).splitlines() if " E " in ln or "Error" in ln)[-300:]
        raise EnvironmentUnavailable(f"cannot start {where}: {one_line(exc, 200)}" + (f" ({said})" if said else ""),
                                     hint="check `ray status`; a cluster is joined with --address HOST:PORT") from None
    except OSError as exc:  # HOME a file, TMPDIR read-only: where Ray keeps its session cannot be written
        _stop_quietly()
        raise EnvironmentUnavailable(f"cannot start Ray: {exc.strerror or one_line(exc, 200)}"
                                     + (f" ({exc.filename})" if getattr(exc, "filename", None) else ""),
                                     hint="check that HOME is a folder and TMPDIR can be written") from None
    finally:
        _restore_handlers(handlers)
    total = int(ray.cluster_resources().get("CPU", 0))
    if address is None:
        workers = workers or cores
        threads = max(1, cores // workers)
    else:
        if total < 1:
            stop()
            raise EnvironmentUnavailable(f"the Ray cluster at {address} has no CPUs to run jobs on")
        workers = min(workers or total, total)
        threads = max(1, total // workers)
    return Cluster(address or "local", workers, threads, len([n for n in ray.nodes() if n.get("Alive")]))


CONNECT_TIMEOUT_S = 10.0  # an --address where nothing answers is given up after this (exit 3), long before Ray would


def check_address(address: str | None) -> None:
    """An --address HOST:PORT (or ray://HOST:PORT) accepts a TCP connection, or exit 3 within CONNECT_TIMEOUT_S:
    checked before any work (exports take minutes), long before Ray itself would give up. None and auto: nothing
    to check here."""
    import socket

    if address in (None, "auto"):
        return

    text = address.split("://", 1)[-1]
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--address {address!r} is not HOST:PORT (or auto)", hint="e.g. --address 10.0.0.5:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or one_line(exc, 120))
        raise EnvironmentUnavailable(f"the Ray cluster at {address} cannot be reached: {why}",
                                     hint="check the address and that `ray start --head` runs there") from None


_SAVED: dict = {}  # edgekit's own SIGINT/SIGTERM handlers while Ray runs, put back by stop()
_RAISED: list = []  # what they raised: Ray turns any KeyboardInterrupt inside its calls into a plain one


def _python_handlers() -> dict:
    """edgekit's SIGINT/SIGTERM handlers: Ray installs its own when it starts (SIGTERM: sys.exit, or its core's
    stack dump); edgekit puts its own back, so a signal keeps the finished rows."""
    import signal

    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(handlers: dict) -> None:
    """edgekit's handlers back in place, each wrapped to remember what it raised (interrupt_raised)."""
    import signal

    def remembering(handler):
        def wrapped(signum, frame):
            try:
                handler(signum, frame)
            except BaseException as exc:
                _RAISED.append(exc)
                raise
        return wrapped

    _RAISED.clear()
    for sig, handler in handlers.items():
        if not callable(handler):
            continue
        try:
            signal.signal(sig, remembering(handler))
            _SAVED.setdefault(sig, handler)
        except (ValueError, OSError, TypeError):  # not the main thread: Ray's handlers stay
            pass


def interrupt_raised(exc: BaseException) -> BaseException:
    """The exception edgekit's own signal handler raised (SIGTERM's, exit 143), where Ray handed back a plain
    KeyboardInterrupt in its place; else `exc`."""
    raised = _RAISED[0] if _RAISED else exc
    _RAISED.clear()
    return raised


def _init(ray, address: str | None, workers: int | None, cores: int, quiet: dict) -> None:
    if address is None:
        workers = workers or cores
        ray.init(address="local", num_cpus=workers * max(1, cores // workers), _node_ip_address="127.0.0.1", **quiet)
    else:
        ray.init(address=address, **quiet)


def reported(printed: str) -> list[str]:
    """What Ray's raylet said during the sweep (it prints to stdout), one line each, its ANSI colours off."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in printed.splitlines()]
    return [f"Ray: {one_line(ln, 240)}" for ln in dict.fromkeys(ln for ln in lines if ln)]


def _stop_quietly() -> None:
    """A Ray instance half started by a failed init: stopped, whatever it says."""
    try:
        stop()
    except Exception:  # noqa: BLE001
        pass


def stop() -> None:
    import signal

    import ray

    try:
        if ray.is_initialized():
            ray.shutdown()
    finally:
        for sig, handler in list(_SAVED.items()):  # edgekit's own handlers, unwrapped
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):
                pass
        _SAVED.clear()


def remote(function, threads: int):
    """`function` as a Ray task reserving `threads` CPUs, retried when its worker dies."""
    import ray

    return ray.remote(num_cpus=threads, max_retries=TASK_RETRIES)(function)


def wait_one(pending: list, timeout: float = 0.5) -> list:
    import ray

    done, _ = ray.wait(pending, num_returns=1, timeout=timeout)
    return done


def result_of(ref):
    """The task's value, or ("died", one line) when Ray gave up on it: its worker died every time, or the task raised
    (then the line is the task's own exception, not Ray's wrapper of it with its terminal colours)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        task_error = getattr(ray.exceptions, "RayTaskError", ())  # the task raised (rather than its worker dying)
        cause = getattr(exc, "cause", None) if isinstance(exc, task_error) else None
        shown = cause if isinstance(cause, BaseException) else exc
        return ("died", f"{type(shown).__name__}: {one_line(shown, 200)}")


def cancel(refs: list) -> None:
    import ray

    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001  (already finished or gone: nothing to cancel)
            pass
