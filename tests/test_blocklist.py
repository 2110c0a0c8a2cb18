"""Blocklists: names, the three list formats, matching, errors, and URL sources with their cache.

URL sources are served by :class:`ListServer`, an ``http.server`` on 127.0.0.1 started by the
test in a thread, whose answers (status and body per path) the test changes as it goes.
"""

from __future__ import annotations

import asyncio
import http.server
import logging
import re
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.counters import Counters
from olm.dns.blocklist import (
    Blocklists,
    DomainSet,
    ListError,
    ListRefresher,
    ListSource,
    ParsedList,
    fetch,
    load,
    parse_list,
    text_name,
    wire_name,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


def names(wires: list[bytes]) -> list[str]:
    return [text_name(w) for w in wires]


def blocklists(*lists: tuple[str, str], allow: str = "") -> Blocklists:
    """Blocklists from ``(name, list text)`` pairs; allow rules of every list plus ``allow``."""
    parsed = [(name, parse_list(text, name)) for name, text in lists]
    allowed = [wire_name(n) for n in allow.split()]
    for _, p in parsed:
        allowed += p.allow
    return Blocklists(
        [(name, DomainSet.build(p.block)) for name, p in parsed], DomainSet.build(allowed)
    )


# -- names -------------------------------------------------------------------------------------


def test_wire_name_examples() -> None:
    assert wire_name("www.example.com") == b"\x03www\x07example\x03com\x00"
    assert wire_name("WWW.Example.COM.") == b"\x03www\x07example\x03com\x00"
    assert wire_name(".") == b"\x00"
    assert wire_name("a" * 63 + ".b") == b"\x3f" + b"a" * 63 + b"\x01b\x00"
    assert wire_name("a\\.b.c") == b"\x03a.b\x01c\x00"
    assert wire_name("\\065\\\\.x") == b"\x02a\\\x01x\x00"  # \065 is "A", lowered
    assert wire_name("a\\ b") == b"\x03a b\x00"
    assert text_name(b"\x03www\x07example\x03com\x00") == "www.example.com."
    assert text_name(b"\x00") == "."
    assert text_name(b"\x03a.b\x02\\\x00\x00") == "a\\.b.\\\\\\000."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty label"),
        ("..", "empty label"),
        ("a..b", "empty label"),
        (".a", "empty label"),
        ("a" * 64 + ".com", "label longer than 63"),
        (".".join(["a" * 63] * 4), "longer than 255"),
        ("exämple.com", "printable ASCII"),
        ("a b.com", "printable ASCII"),
        ("tab\t.com", "printable ASCII"),
        ("a\\", "3 digits"),
        ("a\\25", "3 digits"),
        ("a\\256", "not an octet"),
        ("a\\ é", "printable ASCII"),
    ],
)
def test_wire_name_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        wire_name(text)


def test_wire_name_longest_name() -> None:
    # 3 labels of 63 and one of 61: 4 * 64 - 2 + 1 = 255 octets with the root.
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(wire_name(longest)) == 255
    with pytest.raises(ValueError, match="longer than 255"):
        wire_name(longest + "b")


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x03www",
        b"\x03www\x00\x00",
        b"\x05ab\x00",
        b"\xc0\x0c",
        b"\x40" + b"a" * 64 + b"\x00",
    ],
)
def test_text_name_refuses_what_is_not_one_name(wire: bytes) -> None:
    with pytest.raises(ValueError):
        text_name(wire)


@st.composite
def wire_names(draw: st.DrawFn) -> bytes:
    labels = draw(st.lists(st.binary(min_size=1, max_size=63), max_size=5))
    while sum(len(label) + 1 for label in labels) + 1 > 255:
        labels.pop()
    return b"".join(bytes((len(label),)) + label.lower() for label in labels) + b"\x00"


@settings(max_examples=300, deadline=None)
@given(wire_names())
def test_text_name_round_trips_every_wire_name(wire: bytes) -> None:
    text = text_name(wire)
    assert text.isascii() and text.isprintable() and " " not in text
    assert wire_name(text) == wire


HOST_LABEL = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(HOST_LABEL.filter(lambda s: len(s) <= 63), min_size=1, max_size=4), st.booleans())
def test_wire_name_round_trips_host_names(labels: list[str], dot: bool) -> None:
    text = ".".join(labels) + ("." if dot else "")
    wire = wire_name(text)
    assert text_name(wire) == ".".join(labels).lower() + "."
    assert len(wire) == sum(len(label) + 1 for label in labels) + 1


# -- list formats ------------------------------------------------------------------------------


def test_hosts_format() -> None:
    parsed = parse_list(
        "# a hosts file\n"
        "127.0.0.1 localhost\n"
        "127.0.0.1 localhost.localdomain\n"
        "255.255.255.255 broadcasthost\n"
        "::1 localhost ip6-localhost ip6-loopback\n"
        "fe80::1%lo0 localhost\n"
        "0.0.0.0 0.0.0.0\n"
        "0.0.0.0 ads.example.com\n"
        "127.0.0.1\ta.example  B.Example.   # two names and a comment\n"
        "  0.0.0.0 tracker.example#not-a-comment\n"
        ":: six.example\n"
        "0.0.0.0\n",
        "hosts",
    )
    assert names(parsed.block) == ["ads.example.com.", "a.example.", "b.example.", "six.example."]
    assert parsed.allow == []
    assert parsed.lines == 12
    assert parsed.skipped == 2
    assert parsed.first_skipped == [
        (10, "0.0.0.0 tracker.example#not-a-comment"),
        (12, "0.0.0.0"),
    ]


def test_plain_domains() -> None:
    parsed = parse_list(
        "# plain list\n\nads.example.com\n*.wild.example\nUPPER.example # comment\n"
        "trailing.example.\nunder_score.example\n",
        "plain",
    )
    assert names(parsed.block) == [
        "ads.example.com.",
        "wild.example.",
        "upper.example.",
        "trailing.example.",
        "under_score.example.",
    ]
    assert parsed.skipped == 0 and parsed.lines == 7


def test_adblock_syntax() -> None:
    parsed = parse_list(
        "[Adblock Plus 2.0]\n"
        "! Title: test list\n"
        "||ads.example.com^\n"
        "@@||good.example.com^\n"
        "||x.example^$third-party\n"
        "||y.example^$important\n"
        "||example.org/banner.gif\n"
        "example.net##.ad-banner\n"
        "##.sidebar-ad\n"
        "/ads[0-9]+\\.example/\n"
        "|https://z.example^\n"
        "@@|good.example.net\n"
        "||no-caret.example\n"
        "||*.star.example^\n"
        "||Upper.Example^\n",
        "adblock",
    )
    assert names(parsed.block) == ["ads.example.com.", "upper.example."]
    assert names(parsed.allow) == ["good.example.com."]
    # Every rule that is not a plain domain rule is counted; ! and ## lines are comments.
    assert parsed.skipped == 9
    assert [number for number, _ in parsed.first_skipped] == [5, 6, 7, 8, 10]
    assert parsed.first_skipped[0] == (5, "||x.example^$third-party")


def test_formats_mix_line_by_line_with_crlf() -> None:
    parsed = parse_list(
        "\ufeff# mixed\r\n0.0.0.0 hosts.example\r\nplain.example\r\n||adblock.example^\r\n",
        "mixed",
    )
    assert names(parsed.block) == ["hosts.example.", "plain.example.", "adblock.example."]
    assert parsed.lines == 4 and parsed.skipped == 0


def test_long_skipped_lines_are_cut_in_the_log_sample() -> None:
    parsed = parse_list("ok.example\n" + "||" + "x" * 500 + "/\n", "long")
    assert parsed.skipped == 1
    ((number, text),) = parsed.first_skipped
    assert number == 2 and len(text) == 80


def test_first_skipped_keeps_only_the_first_few() -> None:
    parsed = parse_list("ok.example\n" + "bad/path\n" * 50, "many")
    assert parsed.skipped == 50
    assert [n for n, _ in parsed.first_skipped] == [2, 3, 4, 5, 6]


def test_invalid_names_are_skipped() -> None:
    parsed = parse_list(
        "ok.example\n" + "a" * 64 + ".example\n" + ".".join(["a" * 60] * 5) + "\nexämple.com\n"
        "a..b\n0.0.0.0 good.example bad..example\n",
        "names",
    )
    assert names(parsed.block) == ["ok.example.", "good.example."]
    assert parsed.skipped == 5


def test_empty_and_comment_only_lists_are_not_errors() -> None:
    assert parse_list("", "empty") == ParsedList("empty")
    parsed = parse_list("# nothing here yet\n" * 20 + "\n" * 10, "comments")
    assert parsed.block == [] and parsed.skipped == 0 and parsed.lines == 30


def test_a_short_list_of_bad_lines_is_not_an_error() -> None:
    parsed = parse_list("||x.example^$third-party\nbad/path\n", "short")
    assert parsed.block == [] and parsed.skipped == 2


# -- errors ------------------------------------------------------------------------------------


def test_list_error_names_origin_and_line() -> None:
    error = ListError("lists/ads.txt", 7, "something")
    assert str(error) == "lists/ads.txt:7: something"
    assert (error.origin, error.line, error.message) == ("lists/ads.txt", 7, "something")
    assert isinstance(error, ValueError)


def test_a_file_without_any_rule_is_an_error() -> None:
    page = "<!DOCTYPE html>\n<html>\n<head><title>Login</title></head>\n<body>\n<p>\n</p>\n"
    with pytest.raises(ListError) as caught:
        parse_list(page + "</body>\n</html>\n", "https://portal.example/list.txt")
    assert caught.value.origin == "https://portal.example/list.txt" and caught.value.line == 0
    assert str(caught.value).startswith("https://portal.example/list.txt:0: no rule in 8 lines")
    assert "<!DOCTYPE html>" in str(caught.value)


def test_a_nul_character_is_an_error_on_its_line() -> None:
    with pytest.raises(ListError, match=r"^bin:3: a NUL character"):
        parse_list("a.example\nb.example\n\x1f\x00\x00\n", "bin")


def test_load_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(ListError, match=rf"^{re.escape(str(missing))}:0: cannot read"):
        load(ListSource("m", str(missing)), tmp_path)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a.example\nb.example\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ListError, match=rf"^{re.escape(str(latin))}:3: not UTF-8 text"):
        load(ListSource("l", str(latin)), tmp_path)
    with pytest.raises(ListError, match=rf"^{re.escape(str(tmp_path))}:0: cannot read"):
        load(ListSource("d", str(tmp_path)), tmp_path)


def test_load_and_fetch_a_file(tmp_path: Path) -> None:
    path = tmp_path / "local.txt"
    path.write_text("0.0.0.0 one.example\n")
    source = ListSource("local", str(path))
    assert not source.is_url
    assert names(load(source, tmp_path / "cache").block) == ["one.example."]
    path.write_text("0.0.0.0 two.example\n")
    assert names(run(fetch(source, tmp_path / "cache")).block) == ["two.example."]
    assert not (tmp_path / "cache").exists()  # files are not cached


def test_list_source_checks() -> None:
    assert ListSource("a", "https://lists.example/a.txt").is_url
    assert ListSource("a", "http://lists.example/a.txt").is_url
    assert not ListSource("a", "/etc/olm/a.txt").is_url
    for bad in ({"name": ""}, {"location": ""}, {"refresh": 0.0}, {"refresh": float("nan")}):
        arguments = {"name": "a", "location": "x", **bad}
        with pytest.raises(ValueError):
            ListSource(**arguments)  # type: ignore[arg-type]
    a = ListSource("a", "https://lists.example/a.txt")
    b = ListSource("b", "https://lists.example/b.txt")
    cache = Path("/var/cache/olm")
    assert a.cache_path(cache).parent == cache
    assert a.cache_path(cache) == ListSource("other name", a.location).cache_path(cache)
    assert a.cache_path(cache) != b.cache_path(cache)


# -- matching ----------------------------------------------------------------------------------


def test_a_name_blocks_itself_and_its_subdomains_only() -> None:
    lists = blocklists(("ads", "example.com\n0.0.0.0 tracker.example.net\n||adb.example^\n"))
    for blocked in (
        "example.com",
        "www.example.com",
        "a.b.c.example.com",
        "tracker.example.net",
        "x.tracker.example.net",
        "adb.example",
        "sub.adb.example",
        "EXAMPLE.com",
    ):
        assert lists.match(wire_name(blocked)) == "ads", blocked
    for passed in (
        "notexample.com",
        "com",
        "example.net",
        "example.com.evil.test",
        "example.co",
        "xample.com",
        "racker.example.net",
        "net",
        ".",
    ):
        assert lists.match(wire_name(passed)) is None, passed


def test_a_wildcard_entry_is_the_domain_and_its_subdomains() -> None:
    lists = blocklists(("w", "*.wild.example\n"))
    assert lists.match(wire_name("wild.example")) == "w"
    assert lists.match(wire_name("deep.down.wild.example")) == "w"
    assert lists.match(wire_name("mild.example")) is None


def test_first_list_wins_and_allow_wins_over_every_list() -> None:
    lists = blocklists(
        ("ads", "0.0.0.0 ads.example\n0.0.0.0 both.example\n0.0.0.0 cdn.example\n"),
        ("trackers", "||both.example^\n||t.example^\n||x.cdn.example^\n@@||ok.ads.example^\n"),
        ("more", "example\n@@||fine.t.example^\n"),
        allow="allowed.example",
    )
    assert lists.names == ("ads", "trackers", "more") and len(lists) == 3
    assert lists.match(wire_name("ads.example")) == "ads"
    assert lists.match(wire_name("both.example")) == "ads"
    assert lists.match(wire_name("x.cdn.example")) == "ads"  # ads lists cdn.example
    assert lists.match(wire_name("t.example")) == "trackers"
    assert lists.match(wire_name("other.example")) == "more"
    # An allow rule of any list (or of the configuration) beats every list.
    assert lists.match(wire_name("ok.ads.example")) is None
    assert lists.match(wire_name("deeper.ok.ads.example")) is None
    assert lists.match(wire_name("fine.t.example")) is None
    assert lists.match(wire_name("allowed.example")) is None
    assert lists.match(wire_name("sub.allowed.example")) is None
    assert lists.match(wire_name("notok.ads.example")) == "ads"


def test_blocklists_refuse_two_lists_of_one_name() -> None:
    with pytest.raises(ValueError, match="differ"):
        Blocklists([("a", DomainSet.build([])), ("a", DomainSet.build([]))])


def test_empty_blocklists_match_nothing() -> None:
    lists = Blocklists([])
    assert lists.match(wire_name("example.com")) is None and len(lists) == 0
    assert lists.names == ()


def test_domain_set_size_and_memory() -> None:
    wires = [wire_name(f"host{i}.example{i % 13}.test") for i in range(10_000)]
    domains = DomainSet.build(wires + wires[:100])
    assert len(domains) == 10_000  # duplicates collapse
    assert 8 * 10_000 <= domains.nbytes <= 8.6 * 10_000
    assert all(domains.covers(w) for w in wires)
    assert all(domains.covers(b"\x03sub" + w) for w in wires[:1000])
    assert not any(
        domains.covers(wire_name(f"host{i}.example{i % 13}.test")) for i in range(10_000, 12_000)
    )
    assert not DomainSet.build([]).covers(wires[0])
    assert not domains.covers(b"") and not domains.covers(b"\x00")


LABELS = st.sampled_from(["a", "b", "ab", "ex", "com", "x-y", "_s", "0"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(NAMES, max_size=200), st.lists(NAMES, min_size=1, max_size=50))
def test_covers_is_membership_of_a_suffix(listed: list[str], queries: list[str]) -> None:
    domains = DomainSet.build(wire_name(name) for name in listed)
    reference = set(listed)
    assert len(domains) == len(reference)
    for query in [*queries, *listed]:
        labels = query.split(".")
        expected = any(".".join(labels[i:]) in reference for i in range(len(labels)))
        assert domains.covers(wire_name(query)) is expected, query


# -- URL sources -------------------------------------------------------------------------------


class ListServer:
    """An HTTP server on 127.0.0.1, in a thread, answering ``routes[path] = (status, body)``."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                status, body = server.routes.get(self.path, (404, b"not found\n"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.running = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ListServer]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # never through a proxy from the environment
    listserver = ListServer()
    try:
        yield listserver
    finally:
        listserver.stop()


LIST_V1 = b"# v1\n0.0.0.0 one.example\n0.0.0.0 two.example\n"
LIST_V2 = b"# v2\n0.0.0.0 three.example\n||four.example^\n@@||ok.four.example^\n"
NOT_A_LIST = b"<html>\n<body>\n<h1>Captive portal</h1>\n<p>Log in</p>\n</body>\n</html>\n"


def test_url_source_is_downloaded_then_read_from_the_cache(
    server: ListServer, tmp_path: Path
) -> None:
    server.routes["/list.txt"] = (200, LIST_V1)
    source = ListSource("remote", server.url("/list.txt"))
    assert source.is_url
    parsed = load(source, tmp_path / "cache")
    assert names(parsed.block) == ["one.example.", "two.example."]
    cached = source.cache_path(tmp_path / "cache")
    assert cached.read_bytes() == LIST_V1
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left
    assert server.requests == ["/list.txt"]
    server.stop()
    again = load(source, tmp_path / "cache")
    assert names(again.block) == ["one.example.", "two.example."]


def test_a_failed_or_bad_download_keeps_the_last_good_copy(
    server: ListServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    server.routes["/list.txt"] = (200, LIST_V1)
    source = ListSource("remote", server.url("/list.txt"))
    run(fetch(source, cache))
    cached = source.cache_path(cache)

    for status, body, message in (
        (500, LIST_V2, "HTTP status 500"),
        (404, b"", "HTTP status 404"),
        (203, LIST_V2, "HTTP status 203"),
        (200, NOT_A_LIST, "no rule in 6 lines"),
        (200, b"0.0.0.0 a.example\n\xff\xfe\n", "not UTF-8 text"),
    ):
        server.routes["/list.txt"] = (status, body)
        with pytest.raises(ListError, match=message) as caught:
            run(fetch(source, cache))
        assert caught.value.origin == source.location
        assert cached.read_bytes() == LIST_V1, message
        assert names(load(source, cache).block) == ["one.example.", "two.example."]

    server.stop()
    with pytest.raises(ListError, match=r"^http://127\.0\.0\.1:\d+/list\.txt:0: download failed"):
        run(fetch(source, cache, timeout=2.0))
    assert cached.read_bytes() == LIST_V1
    assert [p.name for p in cache.iterdir()] == [cached.name]


def test_an_unusable_cached_copy_is_downloaded_again(
    server: ListServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/list.txt"] = (200, LIST_V1)
    source = ListSource("remote", server.url("/list.txt"))
    cached = source.cache_path(tmp_path)
    cached.write_bytes(b"\x1f\x8b\x08\x00 gzip, not text")
    with caplog.at_level(logging.WARNING, logger="olm.dns.blocklist"):
        parsed = load(source, tmp_path)
    assert names(parsed.block) == ["one.example.", "two.example."]
    assert cached.read_bytes() == LIST_V1
    assert any("cached copy is unusable" in r.getMessage() for r in caplog.records)


def test_load_without_a_cached_copy_fails_when_the_download_fails(
    server: ListServer, tmp_path: Path
) -> None:
    server.routes["/list.txt"] = (500, b"")
    source = ListSource("remote", server.url("/list.txt"))
    with pytest.raises(ListError, match="HTTP status 500"):
        load(source, tmp_path / "cache")
    assert not source.cache_path(tmp_path / "cache").exists()


def test_a_download_over_its_time_is_abandoned(tmp_path: Path) -> None:
    # A server that accepts and never answers: the download ends after its timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        source = ListSource("slow", f"http://127.0.0.1:{listener.getsockname()[1]}/list.txt")
        with pytest.raises(ListError, match="download failed"):
            run(fetch(source, tmp_path, timeout=0.3))


async def wait_for(condition: Any, what: str, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def test_the_refresher_picks_up_changes_and_survives_failures(
    server: ListServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    server.routes["/a.txt"] = (200, LIST_V1)
    a = ListSource("a", server.url("/a.txt"), refresh=0.2)
    local = tmp_path / "local.txt"
    local.write_text("local.example\n")
    sources = [a, ListSource("local", str(local), refresh=0.01)]
    updates: list[tuple[str, ParsedList]] = []
    counters = Counters("blocklist")

    async def main() -> None:
        refresher = ListRefresher(
            sources,
            cache,
            lambda name, parsed: updates.append((name, parsed)),
            counters,
            timeout=2.0,
            retries=2,
            retry_delay=0.05,
        )
        assert refresher.sources == [a]  # files are not refreshed
        refresher.start()
        # No cached copy: downloaded at once.
        await wait_for(lambda: len(updates) == 1, "first download")
        assert updates[0][0] == "a"
        assert names(updates[0][1].block) == ["one.example.", "two.example."]
        # The same list again: counted as unchanged, nobody told.
        await wait_for(lambda: counters.get("unchanged") >= 1, "unchanged")
        assert len(updates) == 1
        # A new version is cached and passed on.
        server.routes["/a.txt"] = (200, LIST_V2)
        await wait_for(lambda: len(updates) == 2, "new version")
        assert names(updates[1][1].block) == ["three.example.", "four.example."]
        assert names(updates[1][1].allow) == ["ok.four.example."]
        assert a.cache_path(cache).read_bytes() == LIST_V2
        # Failures: logged, counted, retried; the cached copy stays.
        server.routes["/a.txt"] = (500, b"")
        failed = counters.get("fetch_failed")
        await wait_for(lambda: counters.get("fetch_failed") >= failed + 3, "failures")
        server.routes["/a.txt"] = (200, NOT_A_LIST)
        failed = counters.get("fetch_failed")
        await wait_for(lambda: counters.get("fetch_failed") >= failed + 2, "bad lists")
        assert len(updates) == 2
        assert a.cache_path(cache).read_bytes() == LIST_V2
        # And back: the next good version is taken.
        server.routes["/a.txt"] = (200, LIST_V1)
        await wait_for(lambda: len(updates) == 3, "recovery")
        await refresher.stop()
        await refresher.stop()  # twice is harmless
        count = len(server.requests)
        await asyncio.sleep(0.4)
        assert len(server.requests) == count  # stopped

    with caplog.at_level(logging.WARNING, logger="olm.dns.blocklist"):
        run(main())
    assert counters.get("fetched") == 3
    assert any(
        "blocklist a:" in r.getMessage() and "HTTP status 500" in r.getMessage()
        for r in caplog.records
    )
    assert any("keeping the last good copy" in r.getMessage() for r in caplog.records)


def test_the_first_refresh_waits_for_the_cached_copy_to_age(
    server: ListServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    server.routes["/a.txt"] = (200, LIST_V1)
    source = ListSource("a", server.url("/a.txt"), refresh=3600.0)
    load(source, cache)  # downloads and caches it now
    assert len(server.requests) == 1
    counters = Counters()

    async def main() -> None:
        refresher = ListRefresher([source], cache, lambda *_: None, counters)
        refresher.start()
        await asyncio.sleep(0.3)
        await refresher.stop()

    run(main())
    assert len(server.requests) == 1 and counters.snapshot() == {}


def test_an_update_that_raises_does_not_stop_the_refresher(
    server: ListServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/a.txt"] = (200, LIST_V1)
    source = ListSource("a", server.url("/a.txt"), refresh=0.1)
    calls: list[str] = []
    counters = Counters()

    def update(name: str, parsed: ParsedList) -> None:
        calls.append(name)
        raise RuntimeError("handler bug")

    async def main() -> None:
        refresher = ListRefresher([source], tmp_path, update, counters, timeout=2.0)
        refresher.start()
        await wait_for(lambda: len(calls) == 1, "update")
        server.routes["/a.txt"] = (200, LIST_V2)
        await wait_for(lambda: len(calls) == 2, "second update")
        await refresher.stop()

    with caplog.at_level(logging.ERROR, logger="olm.dns.blocklist"):
        run(main())
    assert calls == ["a", "a"]
    assert sum("the update failed" in r.getMessage() for r in caplog.records) == 2
