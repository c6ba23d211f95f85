"""The committed generated modules must be exactly what `make protos` produces from protos/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "services" / "proto_gen"


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["proto_generate"] = module
    spec.loader.exec_module(module)
    return module


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_sources(tmp_path: Path) -> None:
    generator = _load_generator()
    out = tmp_path / "proto_gen"
    out.mkdir()
    generator.generate(out)  # type: ignore[attr-defined]
    fresh, committed = _tree(out), _tree(COMMITTED)
    missing = sorted(set(fresh) - set(committed))
    stale = sorted(set(committed) - set(fresh))
    changed = sorted(name for name in set(fresh) & set(committed) if fresh[name] != committed[name])
    if missing or stale or changed:
        pytest.fail(f"run `make protos`: missing {missing}, stale {stale}, changed {changed}")
