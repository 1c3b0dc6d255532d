"""Throughput of the Prefect batch flow against a bare loop over the same core functions.

Both sides claim the same number of episodes from a fresh SQLite store, download each from a
loopback HTTP server (a few minutes of synthetic two-speaker speech per episode, each file its
own), run the speech chain (`podcastpile.speech.pipeline.STEPS`) with the same tiny NeMo
models, and store the result. Each side runs in its own fresh process (so each loads the
models once, as a worker would); the figures come from one run. Besides the totals it reports
the per-episode loop apart from the run's fixed cost (starting the run, claiming, the claim
guard, ending it) and each step's own seconds, so a gap can be placed. Target: flow
throughput ≥ 0.90× the bare loop.

`--quality-overlap` compares the flow with itself instead: each episode's quality scores (and
completion) run serially between episodes (`flows.process.QUALITY_IN_FLIGHT = 0`) against
beside the next episodes' GPU steps (the default, 2 waiting), same episodes, in the order
serial, overlapped, overlapped, serial. `--gpu-realtime R` stands in for a GPU: each
transcription also waits audio/R seconds without using a CPU (see `simulate_gpu`).

Usage: python bench/pipeline_bench.py [--episodes 8] [--minutes 3] [--quality-overlap [--gpu-realtime 10]]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pipeline.conftest import FIXTURES, pipeline_environment  # noqa: E402


def long_wav(minutes: float, variant: int = 0) -> bytes:
    """The committed conversation repeated to about `minutes` of audio, as WAV bytes.

    `variant` appends that many milliseconds of silence, so every episode's file (and hash) is
    its own: episodes with the same audio are processed once and the rest marked duplicates."""
    with wave.open(str(FIXTURES / "conversation.wav")) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    repeats = max(1, round(minutes * 60 * params.framerate / params.nframes))
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setparams(params)
        silence = b"\x00" * params.sampwidth * params.nchannels * (params.framerate // 1000) * variant
        target.writeframes(frames * repeats + silence)
    return out.getvalue()


def environment(database_url: str) -> dict[str, str]:
    """The tests' pipeline settings (tiny models, CPU, live URLs), for a child process."""
    return {
        **os.environ,
        **pipeline_environment(database_url),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }


def run_bare() -> dict:
    """Claim all, then per episode: download → decode → diarize → transcribe → merge → complete."""
    from podcastpile.speech import pipeline as speech
    from podcastpile.config import load_settings
    from podcastpile.errors import as_episode_error
    from podcastpile.speech.nemo_models import SpeechModels
    from podcastpile.store import EpisodeStatus, EpisodeStore

    settings = load_settings()
    store = EpisodeStore.open(settings)
    started = time.perf_counter()
    claims = store.claim_batch("bare", 10_000)
    models = SpeechModels.from_settings(settings)
    models.diarizer()
    models.asr("en")
    loaded = time.perf_counter()
    steps: dict[str, float] = {}
    for claim in claims:
        try:
            with speech.fetch(claim.download_url, settings) as downloaded:
                episode = speech.EpisodeWork(downloaded, language=claim.language)
                result = speech.run_chain(episode, models)
            for name, spent in episode.seconds.items():
                steps[name] = steps.get(name, 0.0) + spent
            store.complete(claim.episode_id, claim.lease_token, result.to_dict())
        except Exception as error:
            store.fail(claim.episode_id, claim.lease_token, as_episode_error(error))
    finished = time.perf_counter()
    return {"seconds": finished - started, "load_seconds": loaded - started,
            "episodes_seconds": finished - loaded,
            "completed": store.count(EpisodeStatus.completed), "step_seconds": steps}


def run_flow(quality_in_flight: int | None = None) -> dict:
    """The deployed batch flow, called in-process on a Prefect test server; `quality_in_flight`
    overrides how many episodes' quality may wait in the background (0: serial)."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    import flows.process
    from flows.process import process_batch

    if quality_in_flight is not None:
        flows.process.QUALITY_IN_FLIGHT = quality_in_flight
    if os.environ.get("BENCH_GPU_REALTIME"):
        simulate_gpu(float(os.environ["BENCH_GPU_REALTIME"]))
    from podcastpile.config import load_settings
    from podcastpile.store import EpisodeStatus, EpisodeStore

    with prefect_test_harness(server_startup_timeout=120):
        flow(lambda: None, name="warm-up")()  # server and client up before the clock starts
        started = time.perf_counter()
        summary = process_batch(batch_size=10_000)
        seconds = time.perf_counter() - started
    store = EpisodeStore.open(load_settings())
    return {"seconds": seconds, "load_seconds": summary["load_seconds"],
            # the loop over the claimed episodes, from the models loaded to the last one settled
            "episodes_seconds": summary["wall_seconds"] - summary["load_seconds"],
            "completed": store.count(EpisodeStatus.completed), "models_loaded": summary["models_loaded"],
            "step_seconds": summary["step_seconds"]}


def simulate_gpu(realtime: float) -> None:
    """Make each transcription also wait audio seconds / `realtime`, holding no CPU: what a GPU
    forward pass at that speed costs the batch's thread. The tiny models' own steps take well
    under 1 % of quality's time, so without this there is nothing for quality to overlap."""
    from podcastpile.speech.nemo_models import SpeechModels

    transcribe = SpeechModels.transcribe

    def on_gpu(self, decoded, language=None):  # type: ignore[no-untyped-def]
        result = transcribe(self, decoded, language)
        time.sleep(decoded.duration / realtime)
        return result

    SpeechModels.transcribe = on_gpu  # type: ignore[method-assign]


SIDES = {
    "bare": run_bare,
    "flow": run_flow,
    "serial": lambda: run_flow(quality_in_flight=0),
    "overlapped": lambda: run_flow(),  # the flow as deployed (QUALITY_IN_FLIGHT)
}


def run_sides(
    sides: tuple[str, ...], episodes: int, minutes: float, extra_env: dict[str, str] | None = None
) -> tuple[float, list[dict]]:
    """Each side in its own child process over its own store of the same episodes (each file
    its own), in the order given (a side may come twice): (audio seconds, results in order)."""
    extra_env = extra_env or {}
    from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
    from tests.loopback import LoopbackServer, Reply, Request

    bodies = [long_wav(minutes, variant) for variant in range(episodes)]
    audio_seconds = sum((len(body) - 44) / 2 / 16000 for body in bodies)

    def episode_audio(request: Request) -> Reply:  # /ep/<side>-<i>.wav
        variant = int(request.path.rsplit("-", 1)[1].removesuffix(".wav"))
        return Reply(200, bodies[variant], {"Content-Type": "audio/wav"})

    results: list[dict] = []
    with LoopbackServer({"/ep/*": episode_audio}) as server, tempfile.TemporaryDirectory() as workdir:
        for number, side in enumerate(sides):
            url = f"sqlite:///{workdir}/{side}-{number}.db"
            engine = make_engine(url)
            migrate(engine)
            EpisodeStore(engine, archive_required=False).add(
                NewEpisode(server.url(f"/ep/{side}{number}-{i}.wav"), language="en") for i in range(episodes)
            )
            engine.dispose()
            child = subprocess.run(
                [sys.executable, __file__, "--side", side], env={**environment(url), **extra_env},
                capture_output=True, text=True, check=False,
            )
            if child.returncode != 0:
                raise SystemExit(f"{side} failed:\n{child.stderr[-4000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            assert result["completed"] == episodes, result
            results.append({"side": side, "load_average": round(os.getloadavg()[0], 1), **result})
    return audio_seconds, results


def compare_quality_overlap(episodes: int, minutes: float, gpu_realtime: float | None) -> None:
    """The batch's per-episode loop with quality serial between episodes vs beside the GPU
    steps. Run serial, overlapped, overlapped, serial (ABBA), so a load that drifts during the
    run weighs on both sides alike; the ratio is of the summed loop times."""
    # One torch thread: the tiny models' "GPU" steps run on CPU here, and with two intra-op
    # threads on two cores they would compete with quality for the very cores it is meant to
    # use beside them; one thread stands for the GPU, the other core for the quality pool.
    audio_seconds, results = run_sides(("serial", "overlapped", "overlapped", "serial"), episodes, minutes,
                                       extra_env={"OMP_NUM_THREADS": "1", **(
                                           {"BENCH_GPU_REALTIME": str(gpu_realtime)} if gpu_realtime else {})})
    report: dict = {"episodes": episodes, "audio_seconds": round(audio_seconds, 1),
                    "simulated_gpu_realtime": gpu_realtime, "runs": []}
    for result in results:
        report["runs"].append({
            "side": result["side"], "load_average_after": result["load_average"],
            "episodes_seconds": round(result["episodes_seconds"], 2),
            "step_seconds": {name: round(spent, 2) for name, spent in result["step_seconds"].items()},
        })
    loop = {side: sum(r["episodes_seconds"] for r in report["runs"] if r["side"] == side)
            for side in ("serial", "overlapped")}
    report["overlapped_vs_serial"] = round(loop["serial"] / loop["overlapped"], 3)
    print(json.dumps(report, indent=2))
    print(f"per-episode loop, two runs each: serial {loop['serial']:.1f} s, overlapped {loop['overlapped']:.1f} s: "
          f"{report['overlapped_vs_serial']:.2f}x the serial batch's throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--quality-overlap", action="store_true",
                        help="compare quality run serially between episodes with quality beside the GPU steps")
    parser.add_argument("--gpu-realtime", type=float,
                        help="with --quality-overlap: add a CPU-free wait to each transcription, as a GPU at this x real time")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a child process: one side of the comparison
        print(json.dumps(SIDES[args.side]()))
        return
    if args.quality_overlap:
        compare_quality_overlap(args.episodes, args.minutes, args.gpu_realtime)
        return

    from podcastpile.store import EpisodeStore, NewEpisode, make_engine, migrate
    from tests.loopback import LoopbackServer, Reply, Request

    bodies = [long_wav(args.minutes, variant) for variant in range(args.episodes)]
    audio_seconds = sum((len(body) - 44) / 2 / 16000 for body in bodies)
    report: dict = {"episodes": args.episodes, "audio_seconds": round(audio_seconds, 1)}
    def episode_audio(request: Request) -> Reply:  # /ep/<side>-<i>.wav
        variant = int(request.path.rsplit("-", 1)[1].removesuffix(".wav"))
        return Reply(200, bodies[variant], {"Content-Type": "audio/wav"})

    with LoopbackServer({"/ep/*": episode_audio}) as server, \
            tempfile.TemporaryDirectory() as workdir:
        for side in ("bare", "flow"):
            url = f"sqlite:///{workdir}/{side}.db"
            engine = make_engine(url)
            migrate(engine)
            EpisodeStore(engine, archive_required=False).add(
                NewEpisode(server.url(f"/ep/{side}-{i}.wav"), language="en") for i in range(args.episodes)
            )
            engine.dispose()
            child = subprocess.run(
                [sys.executable, __file__, "--side", side], env=environment(url),
                capture_output=True, text=True, check=False,
            )
            if child.returncode != 0:
                raise SystemExit(f"{side} failed:\n{child.stderr[-4000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            assert result["completed"] == args.episodes, result
            report[side] = {
                "seconds": round(result["seconds"], 2),
                "model_load_seconds": round(result["load_seconds"], 2),
                "episodes_seconds": round(result["episodes_seconds"], 2),
                # claiming, starting and ending the run, outside the models and the episodes
                "fixed_seconds": round(result["seconds"] - result["load_seconds"] - result["episodes_seconds"], 2),
                "audio_seconds_per_second": round(audio_seconds / result["seconds"], 1),
                **({"models_loaded": result["models_loaded"]} if "models_loaded" in result else {}),
                # the chain's own steps; the rest of `seconds` is download, store and orchestration
                "step_seconds": {name: round(spent, 2) for name, spent in result["step_seconds"].items()},
            }
    bare, flow = report["bare"], report["flow"]
    report["flow_vs_bare"] = round(bare["seconds"] / flow["seconds"], 3)
    report["flow_vs_bare_after_load"] = round(
        (bare["seconds"] - bare["model_load_seconds"]) / (flow["seconds"] - flow["model_load_seconds"]), 3
    )
    # Per episode: the loops alone, where a batch of any size spends its time once models are in.
    report["flow_vs_bare_per_episode"] = round(bare["episodes_seconds"] / flow["episodes_seconds"], 3)
    print(json.dumps(report, indent=2))
    print(
        f"flow throughput: {report['flow_vs_bare']:.2f}x the bare loop, "
        f"{report['flow_vs_bare_after_load']:.2f}x once models are loaded, "
        f"{report['flow_vs_bare_per_episode']:.2f}x per episode (target >= 0.90); fixed cost of the "
        f"run {flow['fixed_seconds']:.2f} s vs {bare['fixed_seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
