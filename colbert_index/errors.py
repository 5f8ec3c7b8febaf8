"""The exceptions the engine raises for what it finds on disk or on the machine (beyond ``ValueError`` /
``TypeError`` / ``KeyError`` for bad arguments)."""


class IndexFormatError(ValueError):
    """The index directory is missing, truncated, corrupted or of an unknown format version."""


class IndexLockedError(RuntimeError):
    """Another writer holds the index's lock; only one writer at a time may change an index."""


class DeviceUnavailableError(RuntimeError):
    """CUDA was asked for and torch sees no GPU."""
