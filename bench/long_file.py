"""Peak memory of `stembot separate` against input length: it must not grow with the song.

Makes an N-minute input (a real song looped, MP3), runs `stembot separate --stems all` on
it in a child process and reads that process's own peak RSS. Last line:
    minutes=<longest> peak_rss_mb=<max over runs> growth_mb=<longest run - shortest run>

Run: python bench/long_file.py [--minutes 1 4 60] [--model-repo PATH] [--engine windowed|reference]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit import MODELS, SONGS

SOURCE = SONGS / "bytedance_mss_vocals_accompaniment_10s.mp3"


def make_input(minutes: float, dest: Path) -> Path:
    loop = ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", f"file:{SOURCE}", "-t", str(minutes * 60)]
    subprocess.run([*loop, "-c:a", "libmp3lame", "-b:a", "128k", f"file:{dest}"], check=True)
    return dest


# `stembot separate` that writes its own peak RSS (ffmpeg and any one-off conversion child
# have their own processes and are not counted) to $PEAK_FILE in KiB.
MEASURED_CLI = """
import os, resource, runpy
try:
    runpy.run_module("core.cli", run_name="__main__", alter_sys=True)
finally:
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def run(minutes: float, args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    song = make_input(minutes, tmp / f"song-{minutes:g}min.mp3")
    env = os.environ | {
        "STEMBOT_MAX_DURATION_S": str(minutes * 60 + 60),
        "STEMBOT_ENGINE": args.engine,
        "STEMBOT_DEVICE": "cpu",
        "PEAK_FILE": str(tmp / "peak"),
    }
    if args.model_repo:
        env["STEMBOT_MODEL_REPO"] = str(args.model_repo)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURED_CLI, "separate", str(song), "--stems", "all", "-o", str(tmp / "out")],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{minutes:g} min: stembot separate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, int((tmp / "peak").read_text()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 4])
    parser.add_argument("--model-repo", type=Path, default=MODELS if MODELS.exists() else None)
    parser.add_argument("--engine", default="windowed", choices=["windowed", "reference"])
    args = parser.parse_args()
    peaks = []
    with tempfile.TemporaryDirectory(prefix="stembot-long-") as tmp:
        run(0.1, args, Path(tmp))  # warm-up: fills the compiled-network cache, untimed
        for minutes in sorted(args.minutes):
            seconds, peak = run(minutes, args, Path(tmp))
            peaks.append(peak)
            print(f"{minutes:g} min: {seconds:.0f} s, peak RSS {peak:.0f} MB (engine {args.engine})", flush=True)
    print(f"minutes={max(args.minutes):g} peak_rss_mb={max(peaks):.0f} growth_mb={peaks[-1] - peaks[0]:.0f}")


if __name__ == "__main__":
    main()
