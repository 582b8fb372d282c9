"""One error vocabulary: every code the project raises is in `pipeline.errors.CODES` with the
status it is raised with, every code in the table is raised somewhere, and docs/serving.md
prints the same table.

The source is read with `ast`, so a new ``PoseError("some_code", ...)`` anywhere in the
service fails here until the table (and the docs) name it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.errors import CODES, InputError, PoseError, WeightsError, codes_by_status, status_of

SOURCE_DIRS = ("pipeline", "service", "deployments", "configs")
ERROR_CLASSES = {"PoseError": PoseError, "InputError": InputError, "WeightsError": WeightsError}
DOC = REPO / "docs" / "serving.md"


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert files, f"no Python sources under {SOURCE_DIRS}"
    return files


def _raise_sites() -> list[tuple[str, str, int | None, str]]:
    """(code, class name, explicit status or None, where) of every error built with a literal code."""
    sites = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in ERROR_CLASSES or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            status = None
            for kw in node.keywords:
                if kw.arg == "status":
                    assert isinstance(kw.value, ast.Constant), f"{path}:{node.lineno}: a status that is not a literal"
                    status = kw.value.value
            sites.append((first.value, name, status, f"{path.relative_to(REPO)}:{node.lineno}"))
    return sites


def test_every_raised_code_is_in_the_table_with_its_status() -> None:
    sites = _raise_sites()
    assert len(sites) > 50, f"found only {len(sites)} places that raise a coded error: is the scan broken?"
    unknown = sorted({f"{code} ({where})" for code, _, _, where in sites if code not in CODES})
    assert unknown == [], f"codes raised but not in pipeline.errors.CODES: {unknown}"
    other_status = sorted(
        f"{code} raised with {status} at {where}, the table says {CODES[code].status}"
        for code, _, status, where in sites
        if status is not None and status != CODES[code].status
    )
    assert other_status == []


def test_every_code_of_the_table_is_used() -> None:
    """No entry for a code nothing can answer (the table is what clients code against)."""
    literals: set[str] = set()
    for path in _sources():
        if path == REPO / "pipeline" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    # codes made of parts: a job's state names the 409 of a job without a result
    literals |= {"job_" + state for state in ("failed", "cancelled")}
    assert sorted(set(CODES) - literals) == []


def test_an_error_without_a_status_takes_the_tables() -> None:
    for code, entry in CODES.items():
        assert InputError(code, "m").status == entry.status, code
        assert PoseError(code, "m").status == entry.status, code
    assert PoseError("video_unsupported_format", "m").status == 415  # one status, at upload and as a job's failure
    assert status_of("video_corrupt") == 400
    assert status_of("no_such_code_anywhere") == 500


def test_codes_are_snake_case_and_group_by_status() -> None:
    for code, entry in CODES.items():
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", code), code
        assert not code.startswith(("bad_", "invalid_")), f"{code}: the vocabulary says <thing>_invalid"
        assert 400 <= entry.status <= 599 and entry.meaning, code
    groups = codes_by_status(["video_corrupt", "too_many_jobs", "image_empty"])
    assert groups == {400: ["video_corrupt", "image_empty"], 429: ["too_many_jobs"]}


def _doc_table() -> dict[str, tuple[int, str]]:
    """The rows of the error table in docs/serving.md: code -> (status, meaning)."""
    text = DOC.read_text()
    start = text.index("<!-- error-codes -->")
    end = text.index("<!-- /error-codes -->", start)
    rows = {}
    for line in text[start:end].splitlines():
        m = re.fullmatch(r"\| `([a-z0-9_]+)` \| (\d{3}) \| (.+) \|", line.strip())
        if m:
            rows[m.group(1)] = (int(m.group(2)), m.group(3))
    return rows


def test_the_docs_print_the_same_table() -> None:
    rows = _doc_table()
    assert rows, f"no table rows between the error-codes markers in {DOC}"
    assert {c: s for c, (s, _) in rows.items()} == {c: e.status for c, e in CODES.items()}
    assert {c: m for c, (_, m) in rows.items()} == {c: e.meaning for c, e in CODES.items()}


@pytest.mark.parametrize("status", sorted({e.status for e in CODES.values()}))
def test_retry_is_said_only_of_answers_that_carry_retry_after(status: int) -> None:
    retry = {e.retry for e in CODES.values() if e.status == status}
    if status in (429, 507):
        assert retry == {True}
    elif status != 503:
        assert retry == {False}
