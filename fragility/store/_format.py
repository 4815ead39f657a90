"""Names and versions of the on-disk format (specified in docs/format.md)."""

from __future__ import annotations

#: 2: per-row ``bias_pred``; pass ``mode`` taken from the forwards; FE is the final affine layer's input
SCHEMA_VERSION = 2
ENCODING_VERSION = "1.0"

STORE_TYPE = "fragility-store"
PASS_TYPE = "fragility-pass"
COLUMN_TYPE = "fragility-column"
CLASSIFIER_TYPE = "fragility-classifier"
STATUS_TYPE = "fragility-status"

ROOT_FILE = "store.h5"
PASSES_DIR = "passes"
LOCK_FILE = ".writer.lock"

#: per-sample float columns, shape (N, D) except logits (N, C)
FLOAT_COLUMNS = ("fe", "ce_pred", "ce_target", "logits")
#: per-sample columns of fixed dtype, shape (N,)
FIXED_COLUMNS = {"bias_pred": "<f4", "label": "<i8", "pred": "<i8", "index": "<i8", "step": "<i8", "rank": "<i4"}
ALL_COLUMNS = FLOAT_COLUMNS + tuple(FIXED_COLUMNS)
STORAGE_DTYPES = ("float16", "float32")

#: layout of a pass file's ``checksums`` dataset (int64): one row per block of rows written at once;
#: ``crc32`` is zlib's CRC-32 of the block's columns (ALL_COLUMNS order, little-endian stored bytes)
CHECKSUMS_COLUMNS = ("start", "stop", "crc32")
CHECKSUMS_TYPE = "fragility-checksums"

#: layout of a pass file's ``status`` dataset (int64)
STATUS_FIELDS = ("committed", "complete", "nonfinite_rows", "finished_unix_ms")


def encode(obj, kind: str) -> None:
    """Stamp an HDF5 element with its ``encoding-type`` / ``encoding-version``."""
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = ENCODING_VERSION


def block_order(columns) -> list[str]:
    """The order in which a block's columns enter its checksum: ALL_COLUMNS order."""
    return [c for c in ALL_COLUMNS if c in columns] + sorted(c for c in columns if c not in ALL_COLUMNS)
