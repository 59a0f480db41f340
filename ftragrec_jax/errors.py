"""The project's own error types: one line, naming the file/line/key and what was expected."""


class FtragrecError(ValueError):
    """Base class: every error we raise on purpose for bad input."""


class DataError(FtragrecError):
    """A dataset file is malformed (message names file and line)."""


class ConfigError(FtragrecError):
    """A config key is unknown or its value is out of range (message names the key)."""


class CheckpointError(FtragrecError):
    """A checkpoint is missing, truncated, unsafe or does not fit the model/dataset."""
