"""The tools the documentation tests rely on: block markers and output comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runner import output_matches
from tests.docs.snippets import marker_problems, parse

PAGE = """\
# A page

<!-- test-page: supabase roles=anon,authenticated role=authenticated -->

<!-- test: run -->
```python
x = 1
```

```python
unmarked = True
```

=== "Tab"

    <!-- test: file my_flows.py -->
    ```py
    flow = None
    ```

<!-- test: skip -->
```bash
uv run pytest
```

<!-- test: background ready="started for flow" -->
```bash
uv run pgflow worker my_flows:flow
```

```json
{"no": "marker needed"}
```

<!-- test: mermaid -->
```mermaid
graph TD
```

<!-- test: shell -->
```sql
select 1;
```
"""


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "page.md"
    path.write_text(PAGE, encoding="utf-8")
    return path


def test_blocks_carry_their_markers(page: Path) -> None:
    parsed = parse(page)
    assert parsed.options == {
        "supabase": "",
        "roles": "anon,authenticated",
        "role": "authenticated",
    }
    got = [(b.language, b.action, b.args) for b in parsed.blocks]
    assert got == [
        ("python", "run", ""),
        ("python", None, ""),
        ("python", "file", "my_flows.py"),
        ("bash", "skip", ""),
        ("bash", "background", 'ready="started for flow"'),
        ("json", None, ""),
        ("mermaid", "mermaid", ""),
        ("sql", "shell", ""),
    ]
    assert parsed.blocks[2].code == "flow = None\n"  # the tab's indentation is removed
    assert parsed.blocks[4].option("ready") == "started for flow"


def test_marker_problems_are_reported(page: Path) -> None:
    problems = [marker_problems(b) for b in parse(page).blocks]
    assert problems[0] is None
    assert "without a <!-- test: ... --> marker" in (problems[1] or "")
    assert problems[2] is None
    assert "must say why" in (problems[3] or "")
    assert problems[4] is None
    assert problems[5] is None  # json needs no marker
    assert "must name the flow" in (problems[6] or "")
    assert "does not apply to a 'sql' block" in (problems[7] or "")


@pytest.mark.parametrize(
    ("want", "got", "matches"),
    [
        (["a", "b"], ["a", "b"], True),
        (["a", "b"], ["a", "c"], False),
        (["a"], ["a", "b"], False),
        (["run ... done"], ["run 1234 done"], True),
        (["run ... done"], ["run 1234 failed"], False),
        (["{", "...", "}"], ["{", "x", "y", "}"], True),
        (["{", "...", "}"], ["{", "}"], True),
        (["{", "...", "}"], ["{", "x"], False),
        (["a.b"], ["axb"], False),  # only "..." is a wildcard
    ],
)
def test_output_matching(want: list[str], got: list[str], matches: bool) -> None:
    assert output_matches(want, got) is matches


EXPORTING_PAGE = """\
<!-- test: shell exports=GREETING,DATABASE_URL -->
```bash
echo before
export GREETING="hello there"
export DATABASE_URL=postgresql://elsewhere/db
```

<!-- test: output -->
```text
before
```

<!-- test: shell -->
```bash
echo "$GREETING"
```

<!-- test: output -->
```text
hello there
```

<!-- test: run -->
```python
import os

print(os.environ["GREETING"])
```

<!-- test: output -->
```text
hello there
```
"""


async def test_exported_variables_reach_the_blocks_after(tmp_path: Path) -> None:
    import os

    from tests.docs.runner import PageRunner

    path = tmp_path / "page.md"
    path.write_text(EXPORTING_PAGE, encoding="utf-8")
    assert "GREETING" not in os.environ
    runner = PageRunner(parse(path), "postgresql://unused/db", tmp_path)
    async with runner:
        await runner.run()
        assert runner.db_url == "postgresql://elsewhere/db"
    assert "GREETING" not in os.environ
    assert not runner.db_dir.exists()
