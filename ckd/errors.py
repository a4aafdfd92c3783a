"""User-facing errors: each message is one line naming the culprit (file, line, key or value) and the fix."""


class CkdError(Exception):
    """Base class; the CLI prints the message on one line and exits non-zero."""


class ConfigError(CkdError):
    """A run or study configuration is invalid."""


class DataError(CkdError):
    """A task's data is missing, malformed or inconsistent."""


class ModelError(CkdError):
    """A model cannot be built, loaded or paired with another."""
