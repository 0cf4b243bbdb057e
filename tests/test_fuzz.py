"""Property tests (hypothesis) over everything that parses what users type or send."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from core.domain.commands import find_url, parse_split
from core.domain.errors import InvalidStemSpec, LinkRefused, StembotError
from core.domain.naming import chat_filename, song_name
from core.domain.stems import parse_stems
from core.media.fetch import check_url
from core.media.uploads import BITRATES_KBPS, estimated_bytes, pack, plan_upload
from worker.windowed import plan_windows

WORDS = st.sampled_from(
    ["vocals", "drums", "bass", "other", "guitar", "piano", "karaoke", "all", "6", "4", "instrumental", "+", "mp3",
     "flac", "wav", "Vocals", "DRUMS", "drums+bass", "vocal", "kareoke", "", " ", "\n", "https://x.y/z.mp3"]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=80), st.lists(WORDS, max_size=6).map(" ".join))


@given(TEXT)
def test_parse_stems_either_parses_or_says_why(text: str) -> None:
    try:
        selection = parse_stems(text)
    except InvalidStemSpec as exc:
        assert exc.user_message
        return
    assert selection.outputs, text
    assert parse_stems(selection.spec) == selection  # the canonical spec round-trips
    for output in selection.outputs:
        assert output.sources and "/" not in output.name


@given(TEXT)
def test_parse_split_never_crashes(text: str) -> None:
    try:
        command = parse_split(text)
    except StembotError as exc:
        assert exc.user_message
        return
    assert command.format in (None, "mp3", "m4a", "flac", "wav", "opus")
    if command.url is not None:
        assert command.url.startswith(("http://", "https://"))


@given(st.text(max_size=300))
def test_song_names_are_safe_for_paths(name: str) -> None:
    song = song_name(name)
    assert song and len(song) <= 80
    assert not any(c in song for c in '/\\:*?"<>|\x00') and song not in (".", "..")
    assert "/" not in chat_filename(song, "vocals", "mp3")


@given(st.text(max_size=200))
def test_find_url_only_finds_http_links(text: str) -> None:
    url = find_url(text)
    assert url is None or (url.lower().startswith(("http://", "https://")) and url in text)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["file", "ftp", "gopher", "javascript", "data", "http", "https"]),
    st.sampled_from(["127.0.0.1", "localhost", "10.1.2.3", "169.254.169.254", "[::1]", "192.168.0.1", "0.0.0.0"]),
    st.text(alphabet="abc/._%-", max_size=20),
)
def test_links_to_local_hosts_and_other_schemes_are_refused(scheme: str, host: str, path: str) -> None:
    try:
        asyncio.run(check_url(f"{scheme}://{host}/{path}", allow_private=False))
    except LinkRefused:
        return
    raise AssertionError("accepted")


@given(
    st.sampled_from(["mp3", "m4a", "opus", "flac", "wav"]),
    st.floats(min_value=0.5, max_value=4 * 3600),
    st.one_of(st.none(), st.integers(min_value=100_000, max_value=2_000_000_000)),
    st.sampled_from(BITRATES_KBPS),
)
def test_upload_plans_fit_or_say_parts(fmt: str, duration: float, limit: int | None, preferred: int) -> None:
    plan = plan_upload(fmt, duration, limit, preferred)
    assert plan.bitrate_kbps is None or plan.bitrate_kbps <= preferred or plan.bitrate_kbps == BITRATES_KBPS[-1]
    fits = limit is None or estimated_bytes(plan.format, duration, plan.bitrate_kbps) <= limit
    assert fits or (plan.note is not None and "parts" in plan.note)


@given(st.lists(st.integers(min_value=1, max_value=500), max_size=40), st.integers(min_value=500, max_value=2000))
def test_pack_keeps_order_and_limits(sizes: list[int], limit: int) -> None:
    groups = pack(sizes, limit, 10)
    assert [i for g in groups for i in g] == list(range(len(sizes)))
    assert all(len(g) <= 10 and sum(sizes[i] for i in g) <= limit for g in groups)


@given(st.integers(min_value=1, max_value=10_000), st.integers(min_value=0, max_value=49))
def test_windows_cover_every_sample(total: int, min_overlap: int) -> None:
    for layout in ("even", "reference"):
        windows = plan_windows(total, 100, layout, 0.25, min_overlap)  # type: ignore[arg-type]
        covered = set()
        for w in windows:
            covered.update(range(w.start, w.start + w.length))
        assert covered == set(range(total))
        assert [w.start for w in windows] == sorted(w.start for w in windows)
