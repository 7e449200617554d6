"""Every ``--json`` output matches the schema docs/CLI.md prints for it.

The schemas are read from docs/CLI.md itself (each ``### `mvault ...` `` heading
followed by a ```json block), so the page and the code cannot drift apart; a
command documented here without a run below, or run without a schema, fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.cli.conftest import Result

DOC = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"


def _schemas() -> dict[str, dict[str, Any]]:
    """``{heading: schema}``, the heading being the command as the page writes it."""
    text = DOC.read_text()
    out: dict[str, dict[str, Any]] = {}
    parts = re.split(r"^### `mvault ([^`]+?) --json`.*$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        block = re.search(r"```json\n(.*?)```", body, re.S)
        assert block, f"no schema under `mvault {heading}`"
        out[heading] = json.loads(block.group(1))
    return out


SCHEMAS = _schemas()


def test_the_page_has_a_schema_per_command() -> None:
    assert set(SCHEMAS) == set(RUNS), set(SCHEMAS) ^ set(RUNS)
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


RunCLI = Callable[..., Result]


def _setup(mvault: RunCLI, tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    assert mvault("push", "m:1.0.0", str(d), "--alias", "prod", "--label", "team=nlp").code == 0
    assert mvault("push", "m:1.0.1", str(tmp_path / "b.txt")).code == 0


#: The command run for each documented heading (``{tmp}`` is the test's directory).
RUNS: dict[str, list[str]] = {
    "push NAME:VERSION SOURCE": ["push", "m:1.0.2", "{tmp}/b.txt"],
    "pull NAME[@SPEC] -o PATH": ["pull", "m@prod", "-o", "{tmp}/out"],
    "ls": ["ls"],
    "ls NAME": ["ls", "m"],
    "show NAME[@SPEC]": ["show", "m@prod"],
    "alias set NAME ALIAS VERSION": ["alias", "set", "m", "staging", "1.0.1"],
    "alias rm NAME ALIAS": ["alias", "rm", "m", "prod"],
    "rm NAME:VERSION": ["rm", "m:1.0.1", "-y", "--force"],
    "verify [NAME[@SPEC]]": ["verify"],
    "gc [--dry-run] [--grace S]": ["gc", "--dry-run"],
    "export NAME[@SPEC] FILE.mvpk": ["export", "m@1.0.0", "{tmp}/m.mvpk"],
    "inspect FILE.mvpk": ["inspect", "{tmp}/m.mvpk"],
    "db current": ["db", "current"],
    "db upgrade": ["db", "upgrade"],
    "cache ls": ["cache", "ls"],
    "cache clear": ["cache", "clear"],
    "doctor": ["doctor"],
    "quickstart": ["quickstart"],
}


@pytest.mark.parametrize("key", sorted(RUNS))
def test_json_output_matches_the_documented_schema(
    key: str, mvault: RunCLI, tmp_path: Path
) -> None:
    _setup(mvault, tmp_path)
    if key.startswith("inspect"):
        assert mvault("export", "m@1.0.0", str(tmp_path / "m.mvpk")).code == 0
    args = [a.replace("{tmp}", str(tmp_path)) for a in RUNS[key]]
    r = mvault(*args, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    jsonschema.validate(data, SCHEMAS[key], format_checker=jsonschema.FormatChecker())


def test_import_matches_the_push_schema(mvault: RunCLI, tmp_path: Path) -> None:
    _setup(mvault, tmp_path)
    assert mvault("export", "m@1.0.0", str(tmp_path / "m.mvpk")).code == 0
    r = mvault("import", str(tmp_path / "m.mvpk"), "n:1.0.0", "--json")
    assert r.code == 0, r.err
    jsonschema.validate(json.loads(r.out), SCHEMAS["push NAME:VERSION SOURCE"])
