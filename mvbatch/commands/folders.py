"""The state and output folders, checked before a command sends or writes anything.

Owns: the one rule for `MVBATCH_STATE_DIR` and `MVBATCH_OUTPUT_DIR`. A command
that writes there (`run`, `report`) first makes each folder it will write in
and writes a probe file into it (`writable`); a command that only reads the
ledger (`plan`, `status`) creates nothing, and needs only that nothing but a
folder is in the way (`readable`). A file in the way, a path that cannot be
created, a read-only mount or a permission error is a `ConfigError` (exit 4)
in one line naming the variable, the folder and the cause, raised before the
first request: never a traceback, never a task charged and then a crash.

Must not: print, or decide which folders a command needs (its caller does).
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

from mvbatch.errors import ConfigError

STATE = "MVBATCH_STATE_DIR"
OUTPUT = "MVBATCH_OUTPUT_DIR"


def writable(root: Path, variable: str, *below: str) -> None:
    """`root` and each folder `below` it exist (made if need be) and can be written in."""
    for folder in (root, *(root / name for name in below)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder, prefix=".mvbatch-probe-"):
                pass
        except OSError as error:
            raise _unusable(root, variable, folder, error) from None


def readable(root: Path, variable: str) -> None:
    """Nothing but a folder is in the way of `root`; creates nothing (it may not exist yet)."""
    for folder in (root, *root.parents):
        try:
            if not folder.exists():
                continue
        except OSError as error:
            raise _unusable(root, variable, folder, error) from None
        if not folder.is_dir():
            raise _unusable(root, variable, folder, NotADirectoryError(errno.ENOTDIR, ""))
        return


def _unusable(root: Path, variable: str, folder: Path, error: OSError) -> ConfigError:
    return ConfigError(
        f"{variable}={root} cannot be used: {_cause(folder, error)}. Set {variable} to a "
        "folder mvbatch can write (checked before anything was sent)."
    )


def _cause(folder: Path, error: OSError) -> str:
    code = error.errno
    if code in (errno.EEXIST, errno.ENOTDIR):
        return f"{_in_the_way(folder)} is a file, not a folder"
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        if folder.is_dir():
            return f"nothing can be written in {folder} (permission denied)"
        return f"{folder} cannot be created (permission denied)"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left for {folder}"
    if folder.is_dir():
        return f"nothing can be written in {folder} ({error.strerror})"
    return f"{folder} cannot be created ({error.strerror})"


def _in_the_way(folder: Path) -> Path:
    """The file that stands where `folder` or one of its parents should be."""
    for candidate in (*reversed(folder.parents), folder):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder
