"""The studio's grants and Telegram initData checks (core/domain/studio.py), and a mix's levels as a
render option (core/domain/render.py): pure functions, tables and known answers."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl, urlencode

import numpy as np
import pytest
from pydantic import ValidationError

from core.domain.render import RenderOptions, describe, file_label, follow_up, label
from core.domain.stems import parse_stems
from core.domain.studio import (
    Grant,
    GrantExpired,
    GrantRefused,
    InitDataRefused,
    check_init_data,
    init_data_hash,
    issue_token,
    read_token,
    verify_init_data,
)

SECRET = "a-long-random-secret"
NOW = 1_800_000_000
GRANT = Grant(song="AbCdEfGh12345678", platform="telegram", user="42", chat="42", exp=NOW + 3600)

# aiogram's known answers (tests/test_utils/test_web_app.py in aiogram/aiogram), made by
# Telegram's documented algorithm for the bot token "42:TEST".
AIOGRAM_TOKEN = "42:TEST"
AIOGRAM_INIT = (
    "auth_date=1650385342&user=%7B%22id%22%3A42%2C%22first_name%22%3A%22Test%22%7D&query_id=test"
    "&hash=46d2ea5e32911ec8d30999b56247654460c0d20949b6277af519e76271182803"
)
AIOGRAM_INIT_PLUS = (  # `+` for spaces, escaped surrogates: the values as sent, decoded once
    "auth_date=1650385342"
    "&user=%7B%22id%22%3A+%22123456789%22%2C+%22first_name%22%3A+%22PlaceholderFirstName%22%2C+%22last_name%22"
    "%3A+%22PlaceholderLastName+%5Cud83c%5Cuddfa%5Cud83c%5Cudde6%22%2C+%22username%22%3A+%22Latand%22%2C+"
    "%22language_code%22%3A+%22en%22%2C+%22is_premium%22%3A+%22true%22%2C+%22allows_write_to_pm%22%3A+%22true%22%7D"
    "&query_id=test&hash=b3c8b293f14ad0f7f0abcf769aea1209a72295d30a87eb0e74df855d32e53bfe"
)
AIOGRAM_AUTH_DATE = 1650385342


def test_a_token_carries_its_grant() -> None:
    token = issue_token(GRANT, SECRET)
    assert read_token(token, SECRET, now=NOW) == GRANT
    assert all(c.isalnum() or c in "-_." for c in token)  # URL-safe as it is


def _flip(token: str, at: int) -> str:
    c = token[at]
    return token[:at] + ("A" if c != "A" else "B") + token[at + 1 :]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda t: _flip(t, 3), id="payload byte changed"),
        pytest.param(lambda t: _flip(t, len(t) - 2), id="signature byte changed"),
        pytest.param(lambda t: issue_token(GRANT, "another-secret"), id="another key"),
        pytest.param(
            lambda t: issue_token(GRANT.model_copy(update={"exp": NOW - 1}), "another-secret"), id="expired+foreign"
        ),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "x" * 5000, id="huge"),
        pytest.param(lambda t: t.split(".")[0], id="no signature"),
    ],
)
def test_tampered_or_foreign_tokens_are_refused(token: object) -> None:
    made = token(issue_token(GRANT, SECRET))  # type: ignore[operator]
    with pytest.raises(GrantRefused) as caught:
        read_token(made, SECRET, now=NOW)
    assert caught.value.status == 403


def test_a_signed_payload_that_is_not_a_grant_is_refused() -> None:
    from core.domain.studio import _serializer

    bad = _serializer(SECRET).dumps({"song": "../../etc", "platform": "telegram", "user": "42", "exp": NOW + 60})
    with pytest.raises(GrantRefused):
        read_token(bad, SECRET, now=NOW)


@pytest.mark.parametrize(("exp", "expired"), [(NOW + 1, False), (NOW, True), (NOW - 3600, True)])
def test_expiry(exp: int, expired: bool) -> None:
    token = issue_token(GRANT.model_copy(update={"exp": exp}), SECRET)
    if expired:
        with pytest.raises(GrantExpired) as caught:
            read_token(token, SECRET, now=NOW)
        assert caught.value.status == 410
    else:
        assert read_token(token, SECRET, now=NOW).exp == exp


@pytest.mark.parametrize("init_data", [AIOGRAM_INIT, AIOGRAM_INIT_PLUS])
def test_init_data_hash_known_answers(init_data: str) -> None:
    fields = dict(parse_qsl(init_data))
    assert init_data_hash({k: v for k, v in fields.items() if k != "hash"}, AIOGRAM_TOKEN) == fields["hash"]


def test_init_data_gives_its_user() -> None:
    assert verify_init_data(AIOGRAM_INIT, AIOGRAM_TOKEN, max_age_s=60, now=AIOGRAM_AUTH_DATE + 10) == "42"


def test_init_data_user_id_must_be_a_number() -> None:
    # aiogram's second vector is genuine, but its user id is the string "123456789"
    with pytest.raises(InitDataRefused):
        verify_init_data(AIOGRAM_INIT_PLUS, AIOGRAM_TOKEN, max_age_s=60, now=AIOGRAM_AUTH_DATE)


def _signed(fields: dict[str, str], token: str = AIOGRAM_TOKEN) -> str:
    return urlencode({**fields, "hash": init_data_hash(fields, token)})


@pytest.mark.parametrize(
    ("init_data", "token", "now"),
    [
        pytest.param(AIOGRAM_INIT, "42:INVALID", AIOGRAM_AUTH_DATE, id="another bot"),
        pytest.param(
            AIOGRAM_INIT.replace("query_id=test", "query_id=tesT"), AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="changed"
        ),
        pytest.param(AIOGRAM_INIT.split("&hash=")[0], AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="no hash"),
        pytest.param(AIOGRAM_INIT, AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE + 3601, id="too old"),
        pytest.param(AIOGRAM_INIT, AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE - 3600, id="from the future"),
        pytest.param(AIOGRAM_INIT + "&hash=00", AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="hash twice"),
        pytest.param("", AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="empty"),
        pytest.param("%%%", AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="not a query"),
        pytest.param(AIOGRAM_INIT.replace("hash=4", "hash=%C3%A9"), AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="non-ascii"),
        pytest.param(_signed({"auth_date": str(AIOGRAM_AUTH_DATE)}), AIOGRAM_TOKEN, AIOGRAM_AUTH_DATE, id="no user"),
        pytest.param(
            _signed({"auth_date": str(AIOGRAM_AUTH_DATE), "user": "{not json"}),
            AIOGRAM_TOKEN,
            AIOGRAM_AUTH_DATE,
            id="user not json",
        ),
    ],
)
def test_bad_init_data_is_refused(init_data: str, token: str, now: int) -> None:
    with pytest.raises(InitDataRefused):
        verify_init_data(init_data, token, max_age_s=3600, now=now)


def test_web_app_grants_need_their_requesters_init_data() -> None:
    webapp = GRANT.model_copy(update={"webapp": True})
    bot = "123:TEST"

    def init(user_id: int) -> str:
        return _signed({"auth_date": str(int(time.time())), "user": json.dumps({"id": user_id})}, bot)

    check_init_data(webapp, init(42), bot, 60)  # the requester: in
    for init_data, token in [(None, bot), (init(43), bot), (init(42), "999:OTHER"), (init(42), None)]:
        with pytest.raises(GrantRefused):
            check_init_data(webapp, init_data, token, 60)
    check_init_data(GRANT, None, bot, 60)  # a plain link needs none


# --- levels: the studio's mix as a render option ----------------------------------------------
MIX = RenderOptions(levels=(("vocals", 0.0), ("drums", 0.5), ("bass", 1.0), ("other", 2.0)))


def test_levels_are_canonical_and_bounded() -> None:
    assert MIX.levels == (("bass", 1.0), ("drums", 0.5), ("other", 2.0), ("vocals", 0.0))
    same = RenderOptions(levels=(("other", 2.0), ("drums", 0.5000001), ("vocals", 0.0), ("bass", 1.0)))
    assert same.cache_part() == MIX.cache_part()
    assert RenderOptions(key=-2).cache_part() == "k-2|t100|s|e"  # keys of requests without levels unchanged
    for bad in [(("vocals", 2.5),), (("vocals", -0.1),), (("vocals", float("nan")),), (("Vocals!", 1.0),),
                (("vocals", 1.0), ("vocals", 0.0))]:  # fmt: skip
        with pytest.raises(ValidationError):
            RenderOptions(levels=bad)


def test_a_mix_is_named_for_what_was_done() -> None:
    spec = parse_stems("drums+bass+other+vocals").outputs[0].name
    options = MIX.model_copy(update={"key": -2, "tempo": 90})
    assert label(spec, options) == "mix (drums −6 dB, other +6 dB, no vocals, key −2, 90 %)"
    assert file_label(spec, options) == "mix.drums-6dB.other+6dB.no_vocals.key-2.tempo90"
    assert describe(RenderOptions(levels=(("vocals", 1.0),))) == ""
    assert follow_up(options, "key+1").levels == MIX.levels  # a follow-up of a mix is that mix


def test_levels_mix_the_stems_and_give_the_rest_of_the_song_to_other() -> None:
    from worker.pipeline import render_output

    rng = np.random.default_rng(1)
    stems = {n: rng.standard_normal((2, 100)).astype(np.float32) for n in ("drums", "bass", "other", "vocals")}
    residual = rng.standard_normal((2, 100)).astype(np.float32) * 0.1
    song = sum(stems.values()) + residual
    every = parse_stems("drums+bass+other+vocals").outputs[0]
    karaoke = render_output(every, stems, song, options=RenderOptions(levels=(("vocals", 0.0),)))
    np.testing.assert_allclose(karaoke, song - stems["vocals"], atol=1e-5)
    solo = render_output(
        every, stems, song, options=RenderOptions(levels=tuple((n, float(n == "drums")) for n in stems))
    )
    np.testing.assert_allclose(solo, stems["drums"], atol=1e-6)
    np.testing.assert_allclose(
        render_output(every, stems, song, options=MIX),
        0.5 * stems["drums"] + stems["bass"] + 2 * (stems["other"] + residual),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("url", "private", "drawn"),
    [
        (
            "https://studio.example.org/s/t",
            True,
            {"text": "🎛 Mixer", "web_app": {"url": "https://studio.example.org/s/t"}},
        ),
        (
            "https://studio.example.org/s/t",
            False,
            {"text": "🎛 Mixer", "url": "https://t.me/stembot_bot?start=mix_SONGID12"},
        ),
        ("http://studio.example.org/s/t", True, None),  # Telegram refuses a message with an http Web App
    ],
)
def test_the_telegram_mixer_button(url: str, private: bool, drawn: dict[str, object] | None) -> None:
    from bots.telegram.frontend import markup
    from core.desk.frontend import MIXER, Button

    buttons = [Button("Key +1", "again", "d1", "key+1"), Button(MIXER, "studio", "d1", change="SONGID12", url=url)]
    rows = markup(buttons, private, "stembot_bot").to_dict()["inline_keyboard"]  # type: ignore[union-attr]
    assert rows[0] == [{"text": "Key +1", "callback_data": "again|d1|key+1"}]
    assert rows[1:] == ([[drawn]] if drawn else [])
