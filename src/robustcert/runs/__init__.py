"""The run engine: examples → a method's certifier → durable typed rows in results.jsonl, resumable."""

from robustcert.runs.engine import parse_indices, run_examples, select_indices
from robustcert.runs.store import read_complete_rows, read_rows
from robustcert.seeding import example_seed

__all__ = [
    "example_seed",
    "parse_indices",
    "read_complete_rows",
    "read_rows",
    "run_examples",
    "select_indices",
]
