"""`make bench`: every benchmark in turn, each in its own process, each printing its numbers
next to a baseline measured in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ("gateway_bench", "classify_bench", "otel_bench")


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHMARKS:
        if not (here / f"{name}.py").exists():
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=here.parent).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
