"""The instrumentation scope routegate reports (a leaf: imports nothing from routegate)."""

__version__ = "0.1.0"
INSTRUMENTATION_NAME = "routegate"
