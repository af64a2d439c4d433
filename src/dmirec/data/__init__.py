"""Data: raw-log readers, the ComiRec/REMI prepare step, and the prepared-dataset format."""

from .dataset import DatasetError, PreparedData, Sequences, load_dataset
from .prepare import PrepareReport, prepare, prepare_shipped_beauty
from .readers import InputError, read_log

__all__ = [
    "DatasetError",
    "InputError",
    "PreparedData",
    "PrepareReport",
    "Sequences",
    "load_dataset",
    "prepare",
    "prepare_shipped_beauty",
    "read_log",
]
