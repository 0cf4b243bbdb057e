"""Fitting stems into upload limits, and per-user limits: pure rules by table, ffmpeg for the cuts."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.domain.errors import QuotaExceeded, TooManyJobs
from core.domain.formats import OutputFormat
from core.domain.limits import check_user
from core.media.audio import encode, probe
from core.media.uploads import UploadPlan, fit_stem, pack, plan_upload
from testkit import read_audio

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("fmt", "duration_s", "limit", "expected"),
    [
        ("mp3", 240, None, UploadPlan("mp3", 320)),
        ("mp3", 240, 50 * 1000 * 1000, UploadPlan("mp3", 320)),  # Telegram: 4 min at 320 kbps is ~9.6 MB
        ("mp3", 240, 10 * MIB, UploadPlan("mp3", 320)),
        ("mp3", 300, 10 * MIB, UploadPlan("mp3", 256, "Lowered to 256 kbps to fit the upload limit.")),
        ("mp3", 600, 10 * MIB, UploadPlan("mp3", 128, "Lowered to 128 kbps to fit the upload limit.")),
        (
            "mp3",
            1200,
            10 * MIB,
            UploadPlan("mp3", 96, "Long song: each stem comes in numbered parts to fit the upload limit."),
        ),
        ("wav", 30, 10 * MIB, UploadPlan("wav", None)),
        (
            "wav",
            120,
            10 * MIB,
            UploadPlan("mp3", 320, "WAV would be too big to upload here, so you get MP3 at 320 kbps."),
        ),
        ("flac", 60, 10 * MIB, UploadPlan("flac", None)),
        (
            "flac",
            600,
            50 * 1000 * 1000,
            UploadPlan("mp3", 320, "FLAC would be too big to upload here, so you get MP3 at 320 kbps."),
        ),
        ("wav", 600, None, UploadPlan("wav", None)),
    ],
)
def test_plan_upload(fmt: str, duration_s: float, limit: int | None, expected: UploadPlan) -> None:
    assert plan_upload(fmt, duration_s, limit, preferred_kbps=320) == expected


def test_plan_upload_never_exceeds_the_preferred_bitrate() -> None:
    assert plan_upload("mp3", 60, 10 * MIB, preferred_kbps=192) == UploadPlan("mp3", 192)


@pytest.mark.parametrize(
    ("sizes", "limit", "max_files", "groups"),
    [
        ([], 100, 10, []),
        ([10] * 3, None, 10, [[0, 1, 2]]),
        ([10] * 12, None, 10, [list(range(10)), [10, 11]]),
        ([60, 30, 20, 90], 100, 10, [[0, 1], [2], [3]]),
        ([100, 100], 100, 10, [[0], [1]]),
    ],
)
def test_pack(sizes: list[int], limit: int | None, max_files: int, groups: list[list[int]]) -> None:
    assert pack(sizes, limit, max_files) == groups


@pytest.mark.parametrize(
    ("running", "used_s", "duration_s", "error"),
    [
        (0, 0, 180, None),
        (1, 0, 180, TooManyJobs),
        (0, 7100, 180, QuotaExceeded),  # 118.3 min used + 3 min > 120 min
        (0, 6990, 10, None),
    ],
)
def test_check_user(running: int, used_s: float, duration_s: float, error: type[Exception] | None) -> None:
    if error is None:
        check_user(running, used_s, duration_s, max_jobs=1, daily_minutes=120)
    else:
        with pytest.raises(error):
            check_user(running, used_s, duration_s, max_jobs=1, daily_minutes=120)


@pytest.mark.parametrize(
    ("cancel_how", "said"),
    [
        ("/cancel it", "Wait for it to finish, or /cancel it."),
        ("press Cancel under its status", "Wait for it to finish, or press Cancel under its status."),
        ("", "Wait for it to finish."),
    ],
)
def test_busy_names_the_frontends_own_cancel(cancel_how: str, said: str) -> None:
    with pytest.raises(TooManyJobs) as caught:
        check_user(1, 0, 10, max_jobs=1, daily_minutes=120, cancel_how=cancel_how)
    assert caught.value.user_message == f"You already have a song in progress. {said}"


def _stem(tmp_path: Path, fmt: OutputFormat, seconds: float = 6.0) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((2, int(44100 * seconds))) * 0.1).astype("float32")
    return encode(wav, tmp_path / f"song - vocals.{fmt.ext}", fmt)


def test_fit_stem_keeps_a_file_that_fits(tmp_path: Path) -> None:
    path = _stem(tmp_path, OutputFormat("mp3", 320))
    assert fit_stem(path.read_bytes(), path.name, 6.0, 10 * MIB, 320) == [(path.name, path.read_bytes())]


def test_fit_stem_lowers_the_bitrate(tmp_path: Path) -> None:
    path = _stem(tmp_path, OutputFormat("mp3", 320))  # ~240 KB
    [(name, data)] = fit_stem(path.read_bytes(), path.name, 6.0, 150_000, 320)
    assert name == path.name and len(data) <= 150_000
    out = tmp_path / "out.mp3"
    out.write_bytes(data)
    assert probe(out).duration_s == pytest.approx(6.0, abs=0.1)


def test_fit_stem_cuts_playable_parts_that_cover_the_song(tmp_path: Path) -> None:
    path = _stem(tmp_path, OutputFormat("wav"))  # ~1 MB of PCM
    parts = fit_stem(path.read_bytes(), path.name, 6.0, 40_000, 320)
    assert [n for n, _ in parts] == [f"song - vocals (part {i} of {len(parts)}).mp3" for i in range(1, len(parts) + 1)]
    assert len(parts) >= 2 and all(len(d) <= 40_000 for _, d in parts)
    total = 0
    for i, (_, data) in enumerate(parts):
        part = tmp_path / f"p{i}.mp3"
        part.write_bytes(data)
        total += read_audio(part).shape[1]
    assert total == pytest.approx(6.0 * 44100, rel=0.03)
