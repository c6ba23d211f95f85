"""Regenerates the Python protobuf and gRPC modules under services/proto_gen from protos/.

protoc writes imports such as ``from tensorflow.core.framework import tensor_pb2``; those would collide
with a real ``tensorflow`` installation, so every import of one of our proto roots is rewritten to live
under ``monolith_serving.proto_gen``. Run through ``make protos``; tests/unit/test_proto_drift.py runs it
into a temporary folder and fails when the committed modules differ.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = "monolith_serving.proto_gen"
# The top-level folders of protos/; imports of these are moved under PACKAGE.
ROOTS = ("tensorflow", "tensorflow_serving", "monolith", "idl")
_IMPORT = re.compile(rf"^(from|import) ({'|'.join(ROOTS)})(\.| )", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(p for p in PROTO_ROOT.rglob("*.proto"))


def run_protoc(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def rewrite_imports(out_dir: Path) -> None:
    for path in sorted(out_dir.rglob("*.py*")):
        text = path.read_text()
        new = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE}.{m.group(2)}{m.group(3)}", text)
        if new != text:
            path.write_text(new)
    for folder in sorted({p.parent for p in out_dir.rglob("*.py")} | {out_dir}):
        current = folder
        while True:
            (current / "__init__.py").touch()
            if current == out_dir:
                break
            current = current.parent


def generate(out_dir: Path) -> None:
    """Writes a complete, import-rewritten proto_gen tree into out_dir (which must be empty)."""
    run_protoc(out_dir)
    rewrite_imports(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT.parent / "services" / "proto_gen")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "proto_gen"
        staging.mkdir()
        generate(staging)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(staging, args.out)
    print(f"generated {len(proto_files())} protos into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
