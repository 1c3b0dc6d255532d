"""bench/quality_bench.py still runs and reports every figure (no speed target here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quality_bench_reports_each_model_and_the_part_outside_forward_passes():
    child = subprocess.run([sys.executable, str(ROOT / "bench" / "quality_bench.py"), "--minutes", "0.4"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout)
    assert 24 <= report["audio_seconds"] < 60 and report["turns"] >= 2
    assert set(report["separately"]) == {"vad", "dnsmos", "loudness", "dnsmos_one_long_turn"}
    for figures in (*report["separately"].values(), report["together"], report["not_model_forward"]):
        assert figures["cpu_seconds_per_audio_hour"] > 0 and figures["x_real_time_per_core"] > 0
    # The forward passes are counted inside the total, so what is left is smaller.
    assert report["not_model_forward"]["cpu_seconds_per_audio_hour"] < report["together"]["cpu_seconds_per_audio_hour"]
    assert 0 < report["separately"]["dnsmos"]["forward_share"] <= 1
    assert report["episode"]["dnsmos_ovrl"] is not None and report["episode"]["speech_ratio"] > 0.5
    assert "target 150x" in child.stderr
