"""Refinery: turn labeled synthetic frames into labeled realistic frames, at dataset scale."""

__version__ = "0.1.0"
