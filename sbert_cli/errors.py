"""Errors the user can act on. Library code raises them; only the CLI turns them into exit code 1."""

import re


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


class OutputError(SbertError):
    """A file or folder sbert cannot write (read-only, full disk, not a regular file); the message names it."""


# What to do about the OS errors a write (or a read) meets most; the rest get the OS's own words.
_OS_ADVICE = {
    "ENOSPC": "free space on that disk or write elsewhere",
    "EDQUOT": "free space within your quota or write elsewhere",
    "EFBIG": "the file would pass this process's size limit (`ulimit -f`): raise it or write elsewhere",
    "EROFS": "write elsewhere",
    "EACCES": "check the folder's permissions or write elsewhere",
    "EPERM": "check the folder's permissions or write elsewhere",
    "EISDIR": "give a file, not a folder",
    "ENOTDIR": "a part of the path is a file, not a folder",
    "EIO": "check the disk",
    "ENAMETOOLONG": "choose a shorter name",
}


# sbert's temp entries beside what it writes: `.NAME.tmp-PID` (being written) and `.NAME.old-PID` (being replaced).
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def os_error_message(error: OSError, path=None) -> str:
    """One line for an OSError: the path (given, or the error's own; else standard output when `path` says so),
    what the OS said, and what to do. A temp entry is named as what it was to become."""
    import errno
    import os

    name = errno.errorcode.get(error.errno or 0, "")
    where = path if path is not None else error.filename
    if isinstance(where, (str, os.PathLike)):  # each temp part named as what it was to become
        parts = str(where).split(os.sep)
        where = os.sep.join(m["name"] if (m := TEMP_NAME.match(part)) else part for part in parts)
    reason = os.strerror(error.errno) if error.errno else (str(error) or type(error).__name__)
    advice = _OS_ADVICE.get(name, "")
    if where == "standard output":
        advice = "send it to a file or a pipe that takes the output"
    text = f"{where}: {reason}" if where is not None else reason
    text += f" ({name})" if name else ""
    return f"{text}; {advice}" if advice else text
