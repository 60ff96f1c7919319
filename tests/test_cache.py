"""The tests' own scratch folders and archive unpacking, on the interpreters the suite supports."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests import _cache
from tests._cache import safe_extract, user_cache


def _tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


@pytest.fixture(params=["filter", "by hand"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both paths of safe_extract: the stdlib's data filter, and the rule used without it."""
    if request.param == "by hand":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter (added in 3.11.4)")
    return str(request.param)


def test_plain_files_are_unpacked(tmp_path: Path, extraction: str) -> None:
    archive = _tarball(tmp_path / "ok.tgz", [_file("package/package.json", b"{}")])
    out = tmp_path / "out"
    out.mkdir()
    safe_extract(archive, out)
    assert (out / "package" / "package.json").read_bytes() == b"{}"


@pytest.mark.parametrize("name", ["../escape.txt", "package/../../escape.txt"])
def test_members_leaving_the_folder_are_refused(tmp_path: Path, extraction: str, name: str) -> None:
    archive = _tarball(tmp_path / "bad.tgz", [_file(name)])
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    with pytest.raises(tarfile.TarError):
        safe_extract(archive, out)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "deep" / "escape.txt").exists()


def test_absolute_members_never_land_at_their_absolute_path(
    tmp_path: Path, extraction: str
) -> None:
    target = Path(f"/pgflow-py-absolute-{os.getpid()}.txt")
    archive = _tarball(tmp_path / "abs.tgz", [_file(str(target))])
    out = tmp_path / "out"
    out.mkdir()
    try:
        # The stdlib filter strips the leading slash; the rule by hand refuses the member.
        safe_extract(archive, out)
    except tarfile.TarError:
        assert extraction == "by hand"
    assert not target.exists()


def test_links_are_refused(tmp_path: Path, extraction: str) -> None:
    link = tarfile.TarInfo("package/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = _tarball(tmp_path / "link.tgz", [(link, b"")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tarfile.TarError):
        safe_extract(archive, out)
    assert not (out / "package" / "passwd").is_symlink()


def test_the_cache_is_private_to_its_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = user_cache("npm-cache")
    assert folder == tmp_path / f"pgflow-py-{os.getuid()}" / "npm-cache"
    assert folder.is_dir()
    assert (folder.parent.stat().st_mode & 0o777) == 0o700
    assert user_cache("npm-cache") == folder  # reused


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another user needs root")
def test_a_cache_folder_of_another_user_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    foreign = tmp_path / f"pgflow-py-{os.getuid()}"
    foreign.mkdir()
    subprocess.run(["chown", "nobody", str(foreign)], check=True)
    with pytest.raises(PermissionError, match="not a folder owned by this user"):
        user_cache("npm-cache")
