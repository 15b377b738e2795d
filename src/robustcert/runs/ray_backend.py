"""Run a certification's examples on Ray: shards of examples as tasks, rows streamed back to the driver.

Guarantees:
- Only the driver writes ``results.jsonl``, when a shard's result arrives, so a task that Ray retries
  after losing its worker cannot write a row twice; a shard is reported once, whole, or not at all.
- Each example's rows depend only on (run seed, index) (see ``runs.engine.example_seed``), so a Ray run
  gives the same rows as a serial one. Workers run torch with one thread each (as many workers as CPUs).
- :func:`connect` to an address returns or raises ``RobustCertError`` within ``connect_timeout`` seconds
  (plus a fraction of a second); it never hangs on an address where no Ray cluster answers.

Authentication (Ray ≥ 2.5x, tested with the pinned 2.60): a cluster started by ``ray.init()`` uses token
authentication by default (token in ``~/.ray/auth_token``, created when missing), and ``ray start --head``
uses it when a token is available. A driver that connects to an explicit HOST:PORT does not turn token
mode on by itself, so it is refused with ``InvalidAuthToken`` by such a cluster. :func:`connect` therefore
turns token mode on whenever a token is available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset — a cluster without authentication accepts such a
client too. An explicit ``RAY_AUTH_MODE`` (``token`` or ``disabled``) is always respected.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.rows import Row

Chunk = tuple[int, ...]

DEFAULT_CONNECT_TIMEOUT = 30.0
START_HINT = "start one with `ray start --head` or check the address"
TOKEN_HINT = (
    "make the cluster's token available to this client: set RAY_AUTH_TOKEN to the output of "
    "`ray get-auth-token` on the head node (or RAY_AUTH_TOKEN_PATH to a file holding it)"
)


def _run_shard(job: Callable[[Chunk], list[list[Row]]], shard: list[Chunk]) -> list[list[list[Row]]]:
    import torch

    torch.set_num_threads(1)
    return [job(chunk) for chunk in shard]


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``HOST:PORT`` / ``[IPv6]:PORT`` / ``ray://HOST:PORT`` address; None for ``auto``.

    Raises RobustCertError for anything else (no port, a port outside 1..65535, an empty host).
    """
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port_text = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    example = "'auto' or HOST:PORT, e.g. 127.0.0.1:6379 (the port `ray start --head` printed)"
    if not sep or not host or "/" in rest or not port_text.isdigit():
        raise RobustCertError(f"Ray address must be {example}; got {address!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise RobustCertError(
            f"Ray address port must be in 1..65535, got {port} in {address!r}; use {example}"
        )
    return host, port


def _check_reachable(address: str, host: str, port: int, timeout: float, budget: float) -> None:
    """RobustCertError unless a TCP connection to (host, port) opens within ``timeout`` seconds.

    ``budget`` is the whole time-out of the connect, for the message."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.01)):
            pass
    except OSError as exc:  # refused, timed out, unknown host, unreachable network
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise RobustCertError(
            f"cannot reach a Ray cluster at {address} within {budget:g} s; {START_HINT} ({reason.lower()})"
        ) from None


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes`` (Ray's notes about our own choices)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# ray.init in a worker thread (see _init_with_deadline) notes that it cannot install its SIGTERM handler;
# the driver keeps Python's default, which is what we want, so the note is noise on every connect.
_THREAD_NOTE = _DropMessages("SIGTERM handler is not set because current thread is not the main thread")
# Turning token mode on for the driver (see _use_token_if_available) is ours, not the cluster's, to report.
_TOKEN_NOTE = _DropMessages("Token authentication is enabled for this Ray cluster")


def _is_auth_failure(exc: BaseException) -> bool:
    """True if ``exc`` or any exception in its cause/context chain is Ray refusing the auth token."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _use_token_if_available() -> None:
    """Turn Ray's token authentication on for this process if ``RAY_AUTH_MODE`` is unset and a token exists.

    This is what ``ray start --head`` does for the cluster it starts; doing the same on the driver makes
    ``ray start --head`` + ``connect(HOST:PORT)`` agree. A no-op on Ray versions without token auth.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # pragma: no cover - a Ray release without token authentication
        return
    token_logger = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    token_logger.addFilter(_TOKEN_NOTE)
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        token_logger.removeFilter(_TOKEN_NOTE)


def _init_with_deadline(ray: Any, address: str, timeout: float, budget: float) -> None:
    """``ray.init(address=...)`` that returns or raises within ``timeout`` seconds.

    ray.init retries an unresponsive GCS for minutes and cannot be interrupted, so it runs in a daemon
    thread; if the deadline passes first, the attempt is abandoned (should it connect later, it
    disconnects again) and RobustCertError is raised. ``budget`` is the whole time-out, for the message.
    """
    outcome: dict[str, BaseException | None] = {}
    lock = threading.Lock()
    abandoned = threading.Event()
    finished = threading.Event()

    def attempt() -> None:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            error = exc
        with lock:
            if abandoned.is_set():
                if error is None:
                    ray.shutdown()
                return
            outcome["error"] = error
            finished.set()

    worker_logger = logging.getLogger("ray._private.worker")
    if _THREAD_NOTE not in worker_logger.filters:
        worker_logger.addFilter(_THREAD_NOTE)
    threading.Thread(target=attempt, name="robustcert-ray-connect", daemon=True).start()
    finished.wait(max(timeout, 0.0))
    with lock:
        if not finished.is_set():
            abandoned.set()
            raise RobustCertError(
                f"cannot reach a Ray cluster at {address} within {budget:g} s: the port is open but no Ray "
                f"cluster answered; check the address (the head's GCS port, 6379 unless `ray start --port` "
                f"set another) or, if the cluster uses token authentication, {TOKEN_HINT}"
            )
    error = outcome.get("error")
    if error is None:
        return
    if _is_auth_failure(error):
        raise RobustCertError(
            f"the Ray cluster at {address} refused this client's auth token; {TOKEN_HINT}"
        ) from error
    if isinstance(error, ConnectionError | RuntimeError | ValueError | TimeoutError):
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RobustCertError(
            f"cannot connect to the Ray cluster at {address}: {first_line}; {START_HINT}"
        ) from error
    raise error


def connect(
    address: str | None = None, workers: int | None = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> Any:
    """Connect to the Ray cluster at ``address`` ("auto" or HOST:PORT), or start a local one with ``workers`` CPUs.

    Returns the ``ray`` module, initialised. An already initialised Ray is reused as it is.

    With an address, the call returns or raises RobustCertError within ``connect_timeout`` seconds: first
    the GCS port must accept a TCP connection (so a wrong or dead address fails at once), then ray.init must
    finish within the time left. A refused auth token, an unparsable address, ``auto`` with no cluster
    running, ``workers`` ≤ 0 and ``workers`` together with an address are RobustCertErrors too. Without an address a new local cluster is started
    (``RAY_ADDRESS`` is ignored then), with no deadline: starting one can take a while on a busy machine.
    """
    started = time.monotonic()  # the budget covers the whole call, importing Ray included
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is an optional extra
        raise RobustCertError("Ray is not installed; pip install 'robustcert[ray]'") from exc
    if not (connect_timeout > 0 and math.isfinite(connect_timeout)):
        raise RobustCertError(
            f"the Ray connect timeout must be a finite number of seconds > 0, got {connect_timeout}"
        )
    if workers is not None and workers <= 0:
        raise RobustCertError(f"--workers must be >= 1, got {workers}")
    if address and workers is not None:
        raise RobustCertError(
            "--workers starts a local Ray and --ray-address joins an existing cluster; pass only one of them"
        )
    if ray.is_initialized():
        return ray
    if address:
        target = parse_address(address)
        if target is not None:
            _check_reachable(
                address, *target, connect_timeout - (time.monotonic() - started), connect_timeout
            )
        _use_token_if_available()
        _init_with_deadline(ray, address, connect_timeout - (time.monotonic() - started), connect_timeout)
        return ray
    try:
        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:
        if _is_auth_failure(exc):
            raise RobustCertError(
                "starting a local Ray failed on token authentication; create a token with "
                "`ray get-auth-token --generate`, or check RAY_AUTH_MODE / RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH"
            ) from exc
        raise
    return ray


def ray_executor(
    address: str | None = None,
    workers: int | None = None,
    shard_size: int = 2,
    max_retries: int = 5,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Callable[[Iterable[Chunk], Callable[[Chunk], list[list[Row]]]], Iterator[list[list[Row]]]]:
    """An executor for ``runs.run_examples``: yields each chunk's rows (per example) as its shard finishes.

    Ray is connected (see :func:`connect`, with ``connect_timeout``) when the first chunk is executed.
    """
    if shard_size <= 0:
        raise RobustCertError(f"shard size must be >= 1, got {shard_size}")

    def execute(items: Iterable[Chunk], job: Callable[[Chunk], list[list[Row]]]) -> Iterator[list[list[Row]]]:
        items = list(items)
        if not items:
            return
        ray = connect(address, workers, connect_timeout=connect_timeout)
        remote_shard = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(_run_shard)
        job_ref = ray.put(job)
        shards = [items[k : k + shard_size] for k in range(0, len(items), shard_size)]
        pending = [remote_shard.remote(job_ref, shard) for shard in shards]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield from ray.get(done[0])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    return execute
