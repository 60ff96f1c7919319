"""The wheel ships the SQL that migrate() and the drift test read, where sql_root() looks."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from pgflow_worker._database import sql_root

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_every_sql_file(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed, so the wheel cannot be built here")
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    ours = sorted(
        f"pgflow_worker/_sql/{p.relative_to(sql_root()).as_posix()}"
        for p in sql_root().rglob("*.sql")
    )
    assert any("/schema/" in name for name in ours)
    assert any("/migrations/" in name for name in ours)
    assert [name for name in ours if name not in shipped] == []
    # sql_root() looks for the installed copy next to the package first.
    assert "pgflow_worker/_database/sqlfiles.py" in shipped
