"""The chaos soak (issue 21): the whole stack on this machine for `--minutes`, faults on a
schedule drawn from `--seed`, then one line per check; exits 1 on any miss.

    .venv/bin/python bench/chaos.py --minutes 30 --episodes 300 --seed 1 [--compare]

`--compare` first runs the same seed without faults, for the throughput ratio (audio seconds
completed per wall second, from the start to the last completion). `--short` injects each kind
of fault once (the test suite's version, tests/test_chaos.py). What it starts, injects and
checks: tests/chaos.py. Logs, the dataset and the store stay in the printed folder.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos import Soak  # noqa: E402


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # One SIGTERM (or Ctrl+C) stops the soak through its cleanup: the fleet is stopped, nothing
    # is left running (Python's default SIGTERM would end this process and orphan the fleet).
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--short", action="store_true", help="each kind of fault once")
    parser.add_argument("--compare", action="store_true", help="first a fault-free run of the same seed")
    parser.add_argument("--settle-minutes", type=float, default=20.0, help="how long the queue may take to settle")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    figures: dict = {}
    if args.compare:
        folder = Path(tempfile.mkdtemp(prefix="podcastpile-chaos-calm-"))
        print(f"fault-free run of seed {args.seed} in {folder}", flush=True)
        calm = Soak(folder, args.seed, args.episodes, args.minutes, faults=False,
                    settle_minutes=args.minutes + args.settle_minutes).run()
        figures["fault_free"] = calm.summary()
        print(json.dumps(figures["fault_free"], indent=1), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="podcastpile-chaos-"))
    print(f"soak of seed {args.seed} in {folder}", flush=True)
    outcome = Soak(folder, args.seed, args.episodes, args.minutes, short=args.short,
                   settle_minutes=args.settle_minutes, say=lambda line: print(line, flush=True)).run()
    figures["chaos"] = outcome.summary()
    for check in outcome.checks:
        print(check.line())
    if args.compare and figures["fault_free"]["throughput_x_real_time"]:
        ratio = outcome.throughput / figures["fault_free"]["throughput_x_real_time"]
        figures["throughput_ratio"] = round(ratio, 3)
        print(f"throughput under faults: {ratio:.2f}x the fault-free run (target >= 0.7)")
    print(json.dumps(figures["chaos"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
