"""The link parser against hostile forms: each gets the one message that names its fault
(N22: `http://:80/x` was told "only http and https links are accepted")."""

from __future__ import annotations

import pytest

from core.errors import LinkRefused
from core.fetch import split_link

MALFORMED = "not a valid web address"
SCHEME = "Only http:// and https://"
CREDENTIALS = "user name or password"


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("http://:80/x", MALFORMED),  # empty host, with a port
        ("http:///x", MALFORMED),  # empty host
        ("https://:443", MALFORMED),
        ("http://host:/x", None),  # an empty port is the default one
        ("http://@host/x", CREDENTIALS),  # empty userinfo is still userinfo
        ("http://user@host/x", CREDENTIALS),
        ("http://:pw@host/x", CREDENTIALS),
        ("http://host\\@evil.example/", CREDENTIALS),
        ("http://[::1]:80/x", None),  # IPv6 literals parse (the address check comes later)
        ("http://[2606:4700::1111]/x", None),
        ("http://[::1/x", MALFORMED),
        ("http://[::1]x/", MALFORMED),  # junk after the bracket
        ("http://[1.2.3.4]/", MALFORMED),  # an IPv4 address in brackets
        ("http://[v1.fe]/", MALFORMED),  # IPvFuture
        ("http://[fe80::1%25eth0]/", MALFORMED),  # a zone id names a local interface
        ("http://host:0/", MALFORMED),
        ("http://host:65536/", MALFORMED),
        ("http://host:+80/", MALFORMED),
        ("http://host:8o/", MALFORMED),
        ("http://host:\u0663/", MALFORMED),  # an Arabic-Indic digit
        ("http://host:80:80/", MALFORMED),
        ("http://bücher.example/song.mp3", None),  # IDN
        ("http://xn--bcher-kva.example/", None),
        ("http://example.com./a.mp3", None),  # a fully qualified name
        ("http://exa mple.com/", MALFORMED),  # spaces
        ("http://example.com/a song.mp3", MALFORMED),
        ("http://example.com/\ta.mp3", MALFORMED),  # urlsplit would drop the tab quietly
        ("http://a..b/", MALFORMED),  # an empty label
        ("http://./", MALFORMED),
        ("http://-/", MALFORMED),
        ("http://-a.example/", MALFORMED),
        ("http://host%00/", MALFORMED),
        ("http://\u202eevil.example/", MALFORMED),  # a direction override
        ("http://" + "a" * 64 + ".example/", MALFORMED),  # a label over 63 bytes
        ("http://" + "a." * 130 + "example/", MALFORMED),  # a name over 253 bytes
        ("http://example.com/" + "a" * 5000, MALFORMED),  # a very long link
        ("HTTPS://EXAMPLE.COM/A.mp3", None),
        ("ftp://example.com/a.mp3", SCHEME),
        ("file:///etc/passwd", SCHEME),
        ("javascript://example.com/%0aalert(1)", SCHEME),
        ("example.com/a.mp3", SCHEME),
    ],
)
def test_link_forms(url: str, refusal: str | None) -> None:
    if refusal is None:
        split_link(url)
        return
    with pytest.raises(LinkRefused, match=refusal):
        split_link(url)
