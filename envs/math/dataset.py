"""Prompt/answer records from local files: JSONL (one JSON object a line) or parquet (needs pyarrow)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MathProblem:
    prompt: str
    answer: str


def load_problems(
    path: str | Path, prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[MathProblem]:
    """Every record of a .jsonl/.json-lines or .parquet file, in file order.

    Answers may be strings or numbers (turned into strings). Raises ValueError naming the file and the line (or
    row) of a record without the two fields, or an empty file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(path)
    elif suffix in (".parquet", ".pq"):
        rows = _parquet_rows(path)
    else:
        raise ValueError(f"{path}: unknown data file type {suffix!r}; use .jsonl or .parquet")
    problems = []
    for where, row in rows:
        missing = [k for k in (prompt_key, answer_key) if not isinstance(row, dict) or row.get(k) is None]
        if missing:
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"{path} {where}: no {' or '.join(repr(k) for k in missing)} field (found {found}); set "
                "env.prompt_key / env.answer_key to the fields that hold them"
            )
        problems.append(MathProblem(str(row[prompt_key]), str(row[answer_key])))
    if not problems:
        raise ValueError(f"{path} holds no records")
    return problems


def _jsonl_rows(path: Path):
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number}: not valid JSON ({exc.msg})") from None


def _parquet_rows(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading parquet files needs pyarrow: pip install -e .[llm]") from exc
    for index, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"row {index}", row
