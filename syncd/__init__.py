"""syncd: one stock ledger for every store, warehouse and channel."""

__version__ = "0.1.0"
