"""The fixed held-back split of the classifier's development data.

A row is held back when a hash of its ``id`` falls in one fifth of the range: stable across
runs and machines, independent of file order, about 20 % of every category. The shipped
weights are trained on the other rows only (``bench/classify_train.py --write``), so
``bench/classify_bench.py`` measures the shipped system on rows it never saw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DEV", "is_held_back", "load_dev"]

DEFAULT_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "classify_dev.jsonl"


def is_held_back(row_id: str) -> bool:
    digest = hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 5 == 0


def load_dev(path: Path = DEFAULT_DEV) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
