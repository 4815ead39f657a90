"""The HDF5 store: versioned schema (docs/format.md), background writer, lazy chunked reader."""

from ._format import ALL_COLUMNS, FLOAT_COLUMNS, FIXED_COLUMNS, SCHEMA_VERSION
from ._reader import DamagedPass, PassInfo, RankedStore, Store
from ._repair import repair
from ._writer import StoreWriter

__all__ = ["ALL_COLUMNS", "FIXED_COLUMNS", "FLOAT_COLUMNS", "SCHEMA_VERSION", "DamagedPass", "PassInfo", "RankedStore", "Store",
           "StoreWriter", "repair"]
