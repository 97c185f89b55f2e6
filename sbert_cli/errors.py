"""Errors the user can act on. Library code raises them; only the CLI turns them into exit code 1."""


class SbertError(Exception):
    """Base class: the message says what happened and what to do."""


class DataError(SbertError):
    """Bad input data; the message names the file and line."""


class ModelLoadError(SbertError):
    """A checkpoint or model dir that cannot be read or does not match the model."""


class WeightMismatchError(ModelLoadError):
    """Missing, unexpected or mis-shaped parameters when mapping weights."""


class DownloadError(SbertError):
    """The hub could not give us the files."""


class ConfigError(SbertError):
    """Invalid options or option combinations."""


class ResumeError(SbertError):
    """A checkpoint that cannot be resumed with the current settings."""
