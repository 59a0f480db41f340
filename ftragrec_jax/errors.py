"""The project's own error types: one line, naming the file/line/key and what was expected."""

import re


class FtragrecError(ValueError):
    """Base class: every error we raise on purpose for bad input."""


class DataError(FtragrecError):
    """A dataset file is malformed (message names file and line)."""


class ConfigError(FtragrecError):
    """A config key is unknown or its value is out of range (message names the key)."""


class CheckpointError(FtragrecError):
    """A checkpoint is missing, truncated, unsafe or does not fit the model/dataset."""


def short_reason(e: BaseException, limit: int = 300) -> str:
    """One short line from a library's exception, for our messages. Orbax/TensorStore errors can embed a
    traceback (then the last line says what failed) and append kilobytes of JSON spec (`[tensorstore_spec=...]`),
    which say nothing to a user; a long chain "opening X: reading Y: cause" keeps its end, where the file and
    the cause are."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    text = re.sub(r"\s*\[tensorstore_spec.*$", "", text)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]
