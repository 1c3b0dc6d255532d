"""bench/quality_table.py: the note's table is made from the real models on the test corpus."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality_table.py"


def test_the_table_has_a_row_per_case_and_says_what_the_tests_say() -> None:
    spec = importlib.util.spec_from_file_location("quality_table", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    lines = module.table().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows) == list(module.cases())
    clean, noisy = rows["clean speech"], rows["same + white noise at 0 dB SNR"]
    assert float(clean["dnsmos_ovrl"]) > float(noisy["dnsmos_ovrl"]) + 0.5
    assert float(clean["snr_db"]) > float(noisy["snr_db"]) + 10
    silence = rows["silence (5 s)"]
    assert (silence["dnsmos_ovrl"], silence["speech_ratio"], silence["loudness_lufs"]) == ("–", "0.0", "–")
    assert float(rows["music-like chords (12 s)"]["speech_ratio"]) < 0.2
    assert float(rows["overlapped speech (2 s offset)"]["overlap_ratio"]) > 0.1
    assert float(clean["overlap_ratio"]) == 0.0
