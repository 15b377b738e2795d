"""Run a certification's examples on Ray: shards of examples as tasks, rows streamed back to the driver.

Guarantees:
- Only the driver writes ``results.jsonl``, when a shard's result arrives, so a task that Ray retries
  after losing its worker cannot write a row twice; a shard is reported once, whole, or not at all.
- Each example's rows depend only on (run seed, index) (see ``runs.engine.example_seed``), so a Ray run
  gives the same rows as a serial one. Workers run torch with one thread each (as many workers as CPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from robustcert.errors import RobustCertError

Row = dict[str, Any]


Chunk = tuple[int, ...]


def _run_shard(job: Callable[[Chunk], list[list[Row]]], shard: list[Chunk]) -> list[list[list[Row]]]:
    import torch

    torch.set_num_threads(1)
    return [job(chunk) for chunk in shard]


def connect(address: str | None = None, workers: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` ("auto" or HOST:PORT), or start a local one with ``workers`` CPUs."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is an optional extra
        raise RobustCertError("Ray is not installed; pip install 'robustcert[ray]'") from exc
    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            if workers is not None and workers <= 0:
                raise RobustCertError(f"--workers must be >= 1, got {workers}")
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise RobustCertError(
            f"cannot reach a Ray cluster at {address!r}: {exc}; start one with `ray start --head`"
        ) from exc
    return ray


def ray_executor(
    address: str | None = None, workers: int | None = None, shard_size: int = 2, max_retries: int = 5
) -> Callable[[Iterable[Chunk], Callable[[Chunk], list[list[Row]]]], Iterator[list[list[Row]]]]:
    """An executor for ``runs.run_examples``: yields each chunk's rows (per example) as its shard finishes."""
    if shard_size <= 0:
        raise RobustCertError(f"shard size must be >= 1, got {shard_size}")

    def execute(items: Iterable[Chunk], job: Callable[[Chunk], list[list[Row]]]) -> Iterator[list[list[Row]]]:
        items = list(items)
        if not items:
            return
        ray = connect(address, workers)
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
