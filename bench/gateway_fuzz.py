"""Fuzz a real ``qorch gateway`` (aer) from its own OpenAPI document with many examples:
the test ``tests/integration/test_gateway_fuzz.py`` with a bigger budget and fresh random
examples each run.

    .venv/bin/python bench/gateway_fuzz.py [--examples 2000] [--seed N] [--max-qubits 8]

Prints the requests sent by status code, the wall time, each failing operation with the
first failing request as a curl command, and whether the gateway still computes a Bell
state correctly afterwards. Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devenv import gateway as gateway_mod  # noqa: E402
from tests.integration.test_gateway_fuzz import (  # noqa: E402
    TRACEBACK,
    bell_counts,
    fuzz_gateway,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=2000, help="requests per operation and generation mode"
    )
    parser.add_argument("--seed", type=int, help="repeat the run of this seed (default: random)")
    parser.add_argument("--max-qubits", type=int, default=8, help="the aer gateway's limit")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="qorch-fuzz-") as tmp:
        log = Path(tmp) / "gateway.log"
        with gateway_mod.running(
            log, "--provider", "aer", "--backend", "aer", "--max-qubits", str(args.max_qubits)
        ) as gw:
            before = bell_counts(gw.url, "aer", "bench-bell-before")
            report = fuzz_gateway(gw.url, args.examples, seed)
            alive = gw.process.poll() is None
            after = bell_counts(gw.url, "aer", "bench-bell-after") if alive else {}
        text = log.read_text()
        tracebacks = [text[i : i + 3000] for i in _find_all(text, TRACEBACK)]
    print(f"seed {seed}: {report.summary()}")
    for failure in report.failures:
        print(f"\nFAILED {failure}")
    correct = set(before) == set(after) == {"00", "11"}
    print(f"gateway alive: {alive}; Bell state before/after: {before} / {after}")
    print(f"tracebacks in the gateway log: {len(tracebacks)}")
    for tb in tracebacks[:3]:
        print(f"\n{tb}")
    ok = alive and correct and not report.failures and not tracebacks
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def _find_all(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


if __name__ == "__main__":
    raise SystemExit(main())
