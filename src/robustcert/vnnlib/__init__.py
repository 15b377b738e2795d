"""VNN-LIB (the VNN-COMP specification format): a small exact parser and its typed result."""

from robustcert.vnnlib.parse import parse_vnnlib, read_vnnlib
from robustcert.vnnlib.spec import Case, Conjunction, InputBox, VnnSpec

__all__ = ["Case", "Conjunction", "InputBox", "VnnSpec", "parse_vnnlib", "read_vnnlib"]
