"""The chaos soak in short (issue 21): every kind of fault once, on the whole stack, and every
episode done exactly once afterwards. The 30-minute version with the throughput ratio is
bench/chaos.py (`make chaos`); both are tests/chaos.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import Soak


# About 8 minutes alone, up to 15 beside the rest of the suite: 5 of faults, then the settling.
@pytest.mark.timeout(1800)
def test_every_fault_once_and_every_episode_done_exactly_once(tmp_path: Path) -> None:
    soak = Soak(tmp_path, seed=21, episodes=36, minutes=5.0, short=True, settle_minutes=12.0)
    outcome = soak.run()
    report = "\n".join(check.line() for check in outcome.checks)
    print(report)
    for injected in outcome.injected:
        print(injected.fault.kind, injected.note, injected.recovery_seconds)
    assert {i.fault.kind for i in outcome.injected} == set(soak_kinds()), "every kind of fault was injected"
    assert outcome.ok, report + f"\nlogs: {tmp_path}"


def soak_kinds() -> tuple[str, ...]:
    from tests.chaos import FAULT_KINDS

    return FAULT_KINDS
