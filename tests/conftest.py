"""Shared by every test directory: puts ``tests/`` on sys.path so that ``ports`` can be imported from any of them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
