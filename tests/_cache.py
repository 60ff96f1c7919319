"""Per-user scratch folders for what the tests download (npm packages), outside the checkout.

One folder per user: a folder another user created (root's CI, say) is never reused, since
writing into it would fail, and trusting its contents would be unsafe.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

__all__ = ["safe_extract", "user_cache"]


def user_cache(name: str) -> Path:
    """``<tmp>/pgflow-py-<uid>/<name>``, created private to this user, and verified to be ours."""
    root = Path(tempfile.gettempdir()) / f"pgflow-py-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{root} exists but is not a folder owned by this user")
    folder = root / name
    folder.mkdir(exist_ok=True)
    return folder


def safe_extract(archive: Path, destination: Path) -> None:
    """Unpack a tarball of plain files and folders, refusing members that would land outside
    ``destination`` or that are links or devices.

    Python 3.11.4 added ``filter="data"`` for this; Debian 12's Python is 3.11.2, so the same
    rule is applied by hand where the filter is missing.
    """
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
            return
        members = tar.getmembers()
        for member in members:
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts:
                raise tarfile.TarError(f"{archive.name}: {member.name!r} leaves the folder")
            if not (member.isfile() or member.isdir()):
                raise tarfile.TarError(f"{archive.name}: {member.name!r} is not a plain file")
            member.mode = (member.mode | 0o600) & 0o755 if member.isfile() else 0o755
        tar.extractall(destination, members=members)
