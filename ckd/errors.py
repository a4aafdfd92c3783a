"""User-facing errors: each message is one line naming the culprit (file, line, key or value) and the fix."""


class CkdError(Exception):
    """Base class; the CLI prints the message on one line and exits non-zero."""


class ConfigError(CkdError):
    """A run or study configuration is invalid."""


class DataError(CkdError):
    """A task's data is missing, malformed or inconsistent."""


class ModelError(CkdError):
    """A model cannot be built, loaded or paired with another."""


def refuse_unknown_keys(where: str, given, known, error: type[CkdError] = ConfigError, *, kind: str = "") -> None:
    """Raise `error` naming the first key of `given` (a mapping or its keys) not in `known`, with the known keys:
    '<where>: unknown key 'x'[ for a <kind>]; known keys: a, b'. Nothing when every key is known."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}{f' for a {kind}' if kind else ''}; "
                    f"known keys: {', '.join(sorted(known))}")
