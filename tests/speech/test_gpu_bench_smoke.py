"""bench/gpu_pipeline.py keeps working: its CPU smoke mode runs start to finish in a subprocess.

The real run needs a GPU (full-size models, hour-long episodes); this runs the same code
with tiny models on 6 s episodes, and a local-attention threshold low enough that the
long-audio switch is exercised too. A subprocess, because the script is a program: its
argument parsing, stdout JSON and exit code are what a GPU session relies on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_pipeline.py"
SMOKE_ARGS = ["--device", "cpu", "--small", "--minutes", "0.1", "--episodes", "2",
              "--local-attention-above", "5"]


def test_cpu_smoke_run_reports_every_step():
    child = subprocess.run([sys.executable, str(SCRIPT), *SMOKE_ARGS], cwd=ROOT, capture_output=True,
                           text=True, timeout=240, check=False)
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout)  # stdout is exactly one JSON object

    assert report["device"] == "cpu" and report["gpu"] is None and report["sizes"] == "small"
    assert report["episodes"] == 2 and len(report["per_episode"]) == 2
    assert abs(report["audio_seconds"] - 12) < 1
    assert report["audio_seconds_per_second"] > 0
    assert set(report["share"]) == {"download_decode", "diarize", "transcribe", "merge"}
    assert abs(sum(report["share"].values()) - 1) < 0.01
    assert all(episode["audio_format"] == "mp3/mp3" for episode in report["per_episode"])
    assert report["local_attention_used"] is True  # 6 s episodes over a 5 s threshold
    assert {"blank_bias", "tokens_per_minute_at_calibration", "saturated"} <= set(report["calibration"])
    assert "audio s per wall s" in child.stderr
    assert "Streaming Steps" not in child.stderr  # SpeechModels keeps the Sortformer's bar off


def test_full_sizes_match_the_published_models():
    # The configs, not the weights: built at these sizes the models have the published shapes.
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_pipeline
    finally:
        sys.path.remove(str(SCRIPT.parent))
    full = gpu_pipeline.FULL
    assert (full.asr_layers, full.asr_d_model, full.asr_features, full.vocab_size) == (24, 1024, 128, 1024)
    assert (full.pred_hidden, full.pred_layers, full.joint_hidden) == (640, 2, 640)
    assert (full.diar_layers, full.diar_d_model, full.diar_features, full.tf_layers, full.tf_hidden) == (
        17, 512, 80, 18, 192)
    tiny = gpu_pipeline.load_tiny_builders()
    asr = gpu_pipeline.tdt_asr_config(tiny, Path("/nonexistent"), full)
    assert asr["joint"]["num_extra_outputs"] == len(asr["decoding"]["durations"]) == 5
    assert asr["decoding"]["model_type"] == "tdt" and asr["loss"]["loss_name"] == "tdt"
    assert asr["encoder"]["n_layers"] == 24 and asr["encoder"]["subsampling_conv_channels"] == 256
    diar = gpu_pipeline.sortformer_config(tiny, full)
    assert diar["sortformer_modules"]["fc_d_model"] == 512 and diar["sortformer_modules"]["tf_d_model"] == 192
    assert diar["transformer_encoder"]["num_layers"] == 18 and diar["encoder"]["n_layers"] == 17
