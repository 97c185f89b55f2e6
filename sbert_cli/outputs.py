"""The one output-folder policy: what sbert may write into a folder, what `--force` may delete, and who holds it.

Every folder a command writes its results into (a run dir, make-mlm-data output, a convert-weights
destination, an eval report, the demo) is an `OutputDir`:
- `.sbert-outputs.json` records each file sbert wrote there. `--force` deletes those files and the folders
  they leave empty, nothing else: a user's files beside or inside our folders survive, and a path is never
  followed through a symbolic link.
- The folder itself is locked (flock on the directory) while a command writes, so a second command on
  the same folder is refused with the holder's PID (from /proc/locks) instead of interleaving with it.
  The OS drops the lock when the process dies; no lock file is left behind.
- A folder that is the current directory, the home directory or a filesystem root, or that contains a
  folder the command reads from, is refused outright.

And the one way a file or folder is written (`new_file`, `new_file_path`, `write_text`, `place`, `place_folder`):
into a temp entry `.NAME.tmp-PID` beside it, fsynced, then linked into place without replacing anything
(os.link fails on an existing name, so a file that appeared meanwhile is kept and reported), or replaced only
when forced; never through a symbolic link and never onto anything but a regular file (a device, a FIFO).
Files and folders get the user's umask. A write that fails (read-only folder, full disk, `ulimit -f`) removes
its temp entry and is an OutputError naming the path; temp entries of killed runs are removed by the next run
(`remove_stale_temps`: any sbert temp name whose process is gone).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import IO, Iterable, Iterator

from sbert_cli.errors import TEMP_NAME, ConfigError, OutputError, os_error_message
from sbert_cli.limits import parse_json

MANIFEST = ".sbert-outputs.json"
PROBE_CACHE = ".sbert-mlm-probe.json"  # a model dir's MLM-head verdict (tasks/probe.py): bookkeeping, not a result
OWN_FILES = (MANIFEST, PROBE_CACHE)
TEMP_MARKERS = (".tmp-", ".old-")  # `.NAME.tmp-PID` / `.NAME.old-PID`: sbert's half-written or half-replaced entries


class OutputDir:
    """A folder sbert writes results into (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.root = self.path.absolute()
        self.created = False  # set by callers that create the folder (make-mlm-data removes it on failure)
        self._lock_fd: int | None = None

    # -- what sbert wrote here

    def recorded(self) -> set[str]:
        """Paths (relative, '/'-separated) of the files sbert wrote here, including those recorded by the
        manifests of folders inside it (a run dir inside the demo's folder, an eval report inside a run dir)."""
        files = set()
        for folder in self._manifest_folders():
            prefix = "" if folder == self.path else folder.relative_to(self.path).as_posix() + "/"
            files.update(prefix + name for name in _read_manifest(folder))
        return files

    def _manifest_folders(self) -> list[Path]:
        found = []
        for root, dirs, names in os.walk(self.path):  # os.walk does not follow links into folders
            if MANIFEST in names:
                found.append(Path(root))
        return found

    def _own_recorded(self) -> set[str]:
        return _read_manifest(self.path)

    def _write_manifest(self, files: set[str]) -> None:
        if not files:
            (self.path / MANIFEST).unlink(missing_ok=True)
            return
        write_text(self.path / MANIFEST, json.dumps({"format": 1, "files": sorted(files)}, indent=1, ensure_ascii=False) + "\n",
                   force=True)

    def record(self, *entries: str | Path) -> None:
        """Record files (or every file under folders) of this folder as sbert's; give paths inside it."""
        files = self._own_recorded()
        for entry in entries:
            files.update(self._files_under(Path(entry)))
        self._write_manifest(files)

    def expect(self, name: str | Path) -> None:
        """Record NAME whole before sbert moves a folder there, so that a process killed right after the move
        leaves nothing unrecorded; `settle` then lists its files instead."""
        self._write_manifest(self._own_recorded() | {self._relative(Path(name))})

    def settle(self, name: str | Path) -> None:
        """After the move: NAME's files take the place of its whole-entry and of any earlier files under it (one write)."""
        entry = self._relative(Path(name))
        files = {f for f in self._own_recorded() if f != entry and not f.startswith(entry + "/")}
        self._write_manifest(files | set(self._files_under(Path(name))))

    def forget(self, *entries: str | Path) -> None:
        """Drop entries (and everything recorded under them) from the record, after sbert removed them."""
        names = {self._relative(Path(e)) for e in entries}
        files = {f for f in self._own_recorded() if not any(f == n or f.startswith(n + "/") for n in names)}
        self._write_manifest(files)

    def _absolute(self, entry: Path) -> Path:
        """An entry given as a name inside this folder, or as a path (absolute, or starting with this folder's path)."""
        if entry.is_absolute():
            return entry
        if entry.parts[: len(self.path.parts)] == self.path.parts:
            return entry.absolute()
        return self.root / entry

    def _relative(self, entry: Path) -> str:
        return self._absolute(entry).relative_to(self.root).as_posix()

    def _files_under(self, entry: Path) -> list[str]:
        full = self._absolute(entry)
        if full.is_symlink() or not full.is_dir():
            return [self._relative(full)]
        return [self._relative(Path(root) / name) for root, _, names in os.walk(full) for name in names]

    def foreign(self, entry: str | Path = ".") -> list[str]:
        """Files under `entry` (default: the whole folder) that sbert did not write, ignoring its own bookkeeping."""
        full = self.root / entry
        if not (full.exists() or full.is_symlink()):
            return []
        mine = self.recorded()

        def recorded(f: str) -> bool:  # itself, or a folder above it expected whole (killed as it was moved in)
            parts = f.split("/")
            return any("/".join(parts[:n]) in mine for n in range(1, len(parts) + 1))

        return [f for f in self._files_under(full)
                if not recorded(f) and f.rsplit("/", 1)[-1] not in OWN_FILES and not any(map(_is_temp, f.split("/")))]

    # -- checks, before anything is written

    def check(self, force: bool, will_write: Iterable[str] = (), reads: Iterable[str | Path] = (),
              not_empty: str = "is not empty; pass `force` to replace sbert's earlier results there, or choose another folder") -> None:
        """Refuse (reading only) a folder this command must not write into.

        will_write: top-level names the command (re)writes; with force, an existing one must hold only sbert's files.
        reads: folders the command reads from; the output folder may not contain them.
        not_empty: what to say about a folder that already holds something, without force.
        """
        path = self.path
        if path.is_symlink() and not path.is_dir():
            raise ConfigError(f"{path}: is a broken symbolic link; give a folder")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path}: is a file; give a folder")
        resolved = path.resolve()
        if resolved in {Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)}:
            raise ConfigError(f"{path}: is the current, home or root folder; give the results a folder of their own")
        for source in reads:
            source = Path(source).expanduser().resolve()
            if source == resolved or resolved in source.parents:
                raise ConfigError(f"{path}: contains {source}, which this command reads; choose a folder outside it")
        if not path.is_dir():
            return
        holder = lock_holder(path)
        if holder is not None and holder != str(os.getpid()):  # this process's own lock is no obstacle
            raise ConfigError(_in_use(path, holder))
        entries = [p for p in path.iterdir() if p.name not in OWN_FILES and not _is_temp(p.name)]
        if not entries:
            return
        if not force:
            raise ConfigError(f"{path}: {not_empty}")
        for name in will_write:
            foreign = self.foreign(name)
            if foreign:
                raise ConfigError(
                    f"{path / name}: holds files sbert did not write ({foreign[0]}); `force` replaces only sbert's "
                    "own results: move them away or choose another folder"
                )

    # -- while writing

    def acquire(self) -> "OutputDir":
        """Create the folder and lock it for this process; refuse when another process holds it."""
        import fcntl

        if self._lock_fd is not None:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(_in_use(self.path, _lock_pid(self.path))) from None
        self._lock_fd = fd
        self.remove_temp_leftovers()
        return self

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __enter__(self) -> "OutputDir":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def remove_temp_leftovers(self) -> None:
        """Half-written `.NAME.tmp-PID` / `.NAME.old-PID` entries of a process that was killed, anywhere in this
        folder (checkpoints/ too; we hold the lock, so no live writer is inside)."""
        for root, dirs, names in os.walk(self.path):  # not into linked folders
            for name in [n for n in dirs + names if _is_temp(n)]:
                with contextlib.suppress(OSError):
                    _remove(Path(root) / name)
            dirs[:] = [d for d in dirs if not _is_temp(d)]

    def clear(self) -> list[str]:
        """Delete every file sbert recorded here (and the folders that leaves empty); return what was removed."""
        removed = []
        folders = self._manifest_folders()
        for name in sorted(self.recorded()):
            full = self.path / name
            if _inside(full, self.path) and (full.is_file() or full.is_symlink()):
                full.unlink()
                removed.append(name)
            elif _inside(full, self.path) and full.is_dir():  # expected whole: killed as it was moved in
                _remove(full)
                removed.append(name)
        for folder in folders:
            if folder != self.path:
                (folder / MANIFEST).unlink(missing_ok=True)
        for name in removed + [f.relative_to(self.path).as_posix() + "/x" for f in folders if f != self.path]:
            for parent in (self.path / name).parents:  # prune the folders this emptied, up to (not including) the root
                if parent == self.path or not _inside(parent, self.path):
                    break
                with contextlib.suppress(OSError):
                    parent.rmdir()
        self._write_manifest(set())
        return removed

    def replace(self, new: Path, name: str) -> Path:
        """Move the folder `new` to NAME here (NAME may be nested: checkpoints/step-N), replacing sbert's
        earlier NAME whole; record its files. An earlier NAME holding a user's files is refused, not deleted."""
        target = self.path / name
        foreign = self.foreign(name)
        if foreign:
            raise ConfigError(f"{target}: holds files sbert did not write ({foreign[0]}); move them away and run again")
        self.expect(name)
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            _remove(old)
            os.replace(target, old)
            os.replace(new, target)
            _remove(old)
        else:
            os.replace(new, target)
        self.settle(name)
        return target

    def install(self, new: Path) -> list[str]:
        """Move each file of the folder `new` into this folder (one rename each), replacing sbert's files of the
        same name; sbert's earlier files that `new` does not hold are removed. Returns the installed names."""
        names = sorted(p.name for p in new.iterdir())
        earlier = self._own_recorded()
        foreign = [n for n in names if (self.path / n).exists() and n not in self.recorded()]
        if foreign:
            raise ConfigError(f"{self.path / foreign[0]}: was not written by sbert; move it away or choose another folder")
        for name in names:
            os.replace(new / name, self.path / name)
        for stale in sorted(earlier - set(names)):
            if "/" not in stale and (self.path / stale).is_file():
                (self.path / stale).unlink()
        self._write_manifest({n for n in earlier if "/" in n} | set(names))
        return names

    def remove(self, name: str) -> None:
        """Delete NAME when every file under it is sbert's (else leave it), and forget it."""
        target = self.path / name
        if not self.foreign(name):
            _remove(target)
            self.forget(name)


def _read_manifest(folder: Path) -> set[str]:
    try:
        content = parse_json((folder / MANIFEST).read_text(encoding="utf-8"))
        return {str(name) for name in content.get("files", []) if ".." not in str(name).split("/")}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def lock_holder(folder: Path) -> str | None:
    """The PID of the process that holds `folder` (see OutputDir.acquire), or None when it is free."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_pid(folder)
    finally:
        os.close(fd)
    return None


def _lock_pid(folder: Path) -> str:
    """The PID /proc/locks gives for the flock on `folder`'s inode ("unknown" where it cannot tell)."""
    try:
        info = os.stat(folder)
        wanted = f":{info.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(wanted):
                return fields[4]
    except OSError:
        pass
    return "unknown"


def _in_use(path: Path, holder: str) -> str:
    return f"{path}: in use by another sbert process (PID {holder}); wait for it to finish or choose another folder"


def _is_temp(name: str) -> bool:
    return name.startswith(".") and any(marker in name for marker in TEMP_MARKERS)


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` stays inside `root` without passing through a symbolic link."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return False
    current = root
    for part in relative.parts[:-1]:
        current = current / part
        if part == ".." or current.is_symlink():
            return False
    return ".." not in relative.parts


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# ------------------------------------------------------------------------------ writing one file or folder



def temp_path(path: Path, kind: str = "tmp") -> Path:
    """The temp entry beside `path` that this process writes before placing it: `.NAME.tmp-PID`."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_temps(folder: Path, name: str | None = None) -> list[str]:
    """Remove sbert's temp entries in `folder` (only those of `name`, when given) whose process is gone, and
    return their names; an `.NAME.old-PID` whose NAME is missing (killed between the two renames of a
    replacement) is put back instead: the old whole is kept. A folder that cannot be listed is left alone."""
    removed = []
    try:
        children = sorted(Path(folder).iterdir(), key=lambda p: ".old-" not in p.name)  # restore before removing
    except OSError:
        return removed
    for child in children:
        match = TEMP_NAME.match(child.name)
        if not match or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            original = child.parent / match["name"]
            if ".old-" in child.name and not os.path.lexists(original):
                os.rename(child, original)
                continue
            _remove(child)
            removed.append(child.name)
    return removed


def check_target(path: Path, force: bool, what: str = "file") -> None:
    """Refuse (reading only) to write `path`: a symbolic link, anything but a regular file (a folder for
    what="folder"), or an existing entry without force."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(os_error_message(e, path)) from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"{path}: is a symbolic link; sbert never writes through one: remove the link or choose another path")
    regular = stat.S_ISDIR(info.st_mode) if what == "folder" else stat.S_ISREG(info.st_mode)
    if not regular:
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket" if what == "file" else "a file"
        raise OutputError(f"{path}: is {kind}, not a {what}; sbert writes only {what}s: choose another path")
    if not force:
        raise OutputError(f"{path}: already exists; pass `force` to replace it, or choose another path")


def user_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under this process's umask."""
    mask = 0o022
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
    return (0o777 if directory else 0o666) & ~mask


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):  # folders on some filesystems cannot be fsynced
            raise
    finally:
        os.close(fd)


def place(tmp: Path, path: Path, force: bool = False) -> Path:
    """Put the written, fsynced file `tmp` at `path`: linked without replacing (a file that appeared at `path`
    since the check is kept and reported), or, forced, replacing a regular file; `tmp` is gone after."""
    with _placing(tmp, path):
        check_target(path, force=True)
        os.chmod(tmp, user_mode())
        if force:
            os.replace(tmp, path)
            return path
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _appeared(path) from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            if os.path.lexists(path):  # a filesystem without hard links: check, then rename
                raise _appeared(path) from None
            os.rename(tmp, path)
    return path


def _appeared(path: Path) -> OutputError:
    return OutputError(f"{path}: appeared while sbert was writing it, and was kept; pass `force` to replace it, or "
                       "choose another path")


@contextlib.contextmanager
def _placing(tmp: Path, path: Path) -> Iterator[None]:
    """How every placement ends: the folder's new entry on disk, an OSError named by `path`, and `tmp` gone
    whatever happened."""
    try:
        yield
        with contextlib.suppress(OSError):
            fsync_path(path.parent)
    except OSError as e:
        raise OutputError(os_error_message(e, path)) from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                _remove(tmp)


@contextlib.contextmanager
def new_file_path(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield the temp path to write PATH's content into (by any library: np.save, safetensors); then fsync it
    and place it (see `place`). A failure removes the temp file; an OSError becomes an OutputError naming PATH."""
    path = Path(path)
    check_target(path, force)
    remove_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            _remove(tmp)
        yield tmp
        fsync_path(tmp)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(os_error_message(e, path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    place(tmp, path, force)


@contextlib.contextmanager
def new_file(path: str | Path, force: bool = False, text: bool = True) -> Iterator[IO]:
    """Yield a file (UTF-8 text with newline "\\n", or binary) that becomes PATH when the block ends (see
    new_file_path); a block that raises leaves PATH as it was."""
    with new_file_path(path, force) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with (open(fd, "w", encoding="utf-8", newline="\n") if text else open(fd, "wb")) as stream:
            yield stream


def write_text(path: str | Path, content: str, force: bool = False) -> Path:
    """PATH holds `content` (UTF-8), written as `new_file` writes."""
    with new_file(path, force) as stream:
        stream.write(content)
    return Path(path)


def finish_folder(folder: Path) -> Path:
    """Give a folder written by a library (safetensors writes 0600 files) the user's umask, and fsync it whole."""
    for root, dirs, names in os.walk(folder):
        os.chmod(root, user_mode(directory=True))
        for name in names:
            os.chmod(Path(root) / name, user_mode())
            fsync_path(Path(root) / name)
        fsync_path(Path(root))
    return folder


def place_folder(tmp: Path, path: Path, force: bool = False) -> Path:
    """Put the written folder `tmp` at `path` (a missing or empty folder; forced, a folder whose files the caller
    may replace is moved aside and removed after): one rename, so `path` is the old or the new whole."""
    with _placing(tmp, path):
        check_target(path, force=True, what="folder")
        finish_folder(tmp)
        try:
            os.rename(tmp, path)  # replaces only an empty folder
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not force:
                raise OutputError(f"{path}: is not empty; pass `force` to replace it, or choose another path") from None
            old = temp_path(path, "old")
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
    return path
