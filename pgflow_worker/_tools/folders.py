"""Where local servers live, which OS user runs them, and binaries that user can reach.

PostgreSQL refuses to run as root. As root, a server therefore runs as the ``postgres`` OS
user, or as ``nobody`` where there is none (a ``python`` container image). That user must be
able to enter every folder above the server's folder and above its binaries, which rules out a
private home (mode 700) such as ``/root``. So root's folders move to ``/var/lib/pgflow-py`` when
its own are private, and binaries it cannot reach (the ``pgserver`` wheel inside a virtualenv
under ``/root``) are copied once into a folder it can.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from ..errors import PostgresStartError

__all__ = [
    "ROOT_BASE",
    "cache_home",
    "create_folder",
    "data_home",
    "reachable_binaries",
    "reachable_by_others",
    "server_user",
]

#: Root's folder for servers and binary copies when its own home is private.
ROOT_BASE = Path("/var/lib/pgflow-py")

#: Accounts a server started by root may run as, in order of preference.
SERVER_USERS = ("postgres", "nobody")

_BINARY_FOLDERS = ("bin", "lib", "share")


def server_user() -> str | None:
    """The OS user a server started by this process runs as: ``None`` (this process's own)
    unless it is root; as root, ``postgres``, else ``nobody``, whichever exists first."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresStartError(
        "PostgreSQL refuses to run as root and there is neither a 'postgres' nor a 'nobody' "
        "OS user to run it as; create one (useradd --system postgres) or run as another user"
    )


def reachable_by_others(path: Path) -> bool:
    """Whether any user can enter every existing folder above ``path``."""
    for parent in path.parents:
        with contextlib.suppress(FileNotFoundError):
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
    return True


def _xdg(variable: str, default: str) -> Path:
    value = os.environ.get(variable)
    folder = Path(value) if value else Path.home() / default
    return folder.expanduser().resolve() / "pgflow-py"


def _home_for(folder: Path) -> Path:
    """``folder``, unless this is root and a server run as another user could not reach it."""
    if os.geteuid() != 0 or reachable_by_others(folder / "x"):
        return folder
    return ROOT_BASE


def cache_home() -> Path:
    """This user's folder for disposable things: ``$XDG_CACHE_HOME/pgflow-py`` (by default
    ``~/.cache/pgflow-py``), or :data:`ROOT_BASE` for root when that is private."""
    return _home_for(_xdg("XDG_CACHE_HOME", ".cache"))


def data_home() -> Path:
    """This user's folder for data worth keeping: ``$XDG_DATA_HOME/pgflow-py`` (by default
    ``~/.local/share/pgflow-py``), or :data:`ROOT_BASE` for root when that is private."""
    return _home_for(_xdg("XDG_DATA_HOME", ".local/share"))


def create_folder(folder: Path) -> None:
    """``mkdir -p``, with a failure told as what it is (a home that cannot be written, say)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PostgresStartError(
            f"cannot create {folder}: {exc.strerror or exc}; choose a folder you can write"
        ) from exc


def make_own_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) readable by all, refusing one that someone else
    could have prepared: a symbolic link, another user's, or writable by others."""
    create_folder(folder)
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PostgresStartError(f"{folder} is not a folder (a symbolic link?); remove it")
    if info.st_uid != os.geteuid():
        raise PostgresStartError(
            f"{folder} belongs to another user (uid {info.st_uid}); remove it or choose "
            "another folder"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PostgresStartError(f"{folder} is writable by other users; remove it")
    if info.st_mode & 0o555 != 0o555:
        folder.chmod(stat.S_IMODE(info.st_mode) | 0o555)
    return folder


def _reachable_install(bindir: Path) -> bool:
    """Whether any user can enter the folders above ``bindir`` and run its ``postgres``."""
    resolved = bindir.resolve()
    postgres = (resolved / "postgres").stat().st_mode
    return reachable_by_others(resolved / "postgres") and bool(postgres & stat.S_IXOTH)


def _fingerprint(bindir: Path) -> str:
    postgres = bindir / "postgres"
    version = subprocess.run(
        [str(postgres), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    info = postgres.stat()
    key = f"{bindir.resolve()}\0{info.st_size}\0{info.st_mtime_ns}\0{' '.join(version)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    release = version[-1] if version else "unknown"
    return f"pg{release}-{digest}"


def _open_to_all(tree: Path) -> None:
    """Let every user read ``tree`` and run its programs, whatever the umask was."""
    for folder, _, files in os.walk(tree):
        path = Path(folder)
        path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o555)
        for name in files:
            file = path / name
            if file.is_symlink():
                continue
            mode = stat.S_IMODE(file.stat().st_mode)
            file.chmod(mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))


def reachable_binaries(bindir: Path, user: str | None) -> Path:
    """``bindir``, or a copy of its installation that ``user`` can reach.

    Nothing is copied when ``user`` is ``None`` (this process runs the server) or can enter
    every folder above ``bindir``. Otherwise the installation (``bin``, ``lib`` and ``share``
    beside ``bindir``, and a wheel's bundled libraries next to its package, which the
    programs find by a relative path) is copied once into
    ``<cache_home()>/binaries/<version>-<key>``, keyed by the folder, the version and the
    ``postgres`` program, and reused by every later start.
    """
    if user is None:
        return bindir
    if _reachable_install(bindir):
        return bindir
    install = bindir.resolve().parent
    root = make_own_folder(cache_home() / "binaries") / _fingerprint(bindir)
    # The copy keeps the programs' position relative to a wheel's ``<package>.libs`` folder.
    package = install.parent
    target_bindir = root / package.name / install.name / bindir.name
    if (target_bindir / "postgres").is_file():
        return target_bindir
    try:
        _copy_install(bindir, root)
    except OSError as exc:
        raise PostgresStartError(
            f"cannot copy the PostgreSQL binaries in {install} (which the '{user}' OS user "
            f"cannot reach) into {root}: {exc}"
        ) from exc
    return target_bindir


def _copy_install(bindir: Path, root: Path) -> None:
    """Copy the installation around ``bindir`` into ``root``, all at once or not at all."""
    install = bindir.resolve().parent
    package = install.parent
    target_bindir = root / package.name / install.name / bindir.name
    scratch = Path(tempfile.mkdtemp(prefix=".copy-", dir=root.parent))
    try:
        for name in _BINARY_FOLDERS:
            if (install / name).is_dir():
                shutil.copytree(
                    install / name, scratch / package.name / install.name / name, symlinks=True
                )
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, scratch / libs.name, symlinks=True)
        _open_to_all(scratch)
        try:
            scratch.rename(root)
        except OSError:
            if not (target_bindir / "postgres").is_file():  # not a copy made meanwhile
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
