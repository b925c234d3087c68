"""The library's version: one constant at the base layer (``provenance`` records it in every row)."""

__version__ = "0.1.0"
