"""The library's version; part of every cache key, so a new release never reuses old binaries."""

__version__ = "0.1.0"
