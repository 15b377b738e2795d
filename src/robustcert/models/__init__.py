"""The model zoo, the Normalize layer, and model directories."""

from robustcert.models.checkpoint import file_sha256, load_model, read_model_meta, save_model
from robustcert.models.normalize import Normalize
from robustcert.models.zoo import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "Normalize",
    "build_model",
    "file_sha256",
    "load_model",
    "read_model_meta",
    "save_model",
]
