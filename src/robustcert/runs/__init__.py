"""The run engine: examples → per-example certifier → durable rows in results.jsonl, resumable."""

from robustcert.runs.engine import example_seed, parse_indices, run_examples, select_indices
from robustcert.runs.store import read_complete_rows, read_rows

__all__ = [
    "example_seed",
    "parse_indices",
    "read_complete_rows",
    "read_rows",
    "run_examples",
    "select_indices",
]
