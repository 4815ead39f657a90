"""The HDF5 store: versioned schema (docs/format.md), background writer, lazy chunked reader."""

from ._format import ALL_COLUMNS, FLOAT_COLUMNS, FIXED_COLUMNS, SCHEMA_VERSION
from ._reader import PassInfo, RankedStore, Store
from ._writer import StoreWriter

__all__ = ["ALL_COLUMNS", "FLOAT_COLUMNS", "FIXED_COLUMNS", "SCHEMA_VERSION", "PassInfo", "RankedStore", "Store", "StoreWriter"]
