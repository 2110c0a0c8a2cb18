"""Text for ``olm inspect``: sockets as ``ss -tuanie`` shows them, counters as ``netstat -s``.

Both take plain data (the rows of ``Stack.sockets()``, counter ``(name, value)`` pairs), so they
work as well on what came over the control socket as JSON as on live objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_COLUMNS = ("Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port")
_NUMERIC = frozenset(("Recv-Q", "Send-Q"))

_SSTHRESH_SHOWN_BELOW = 0xFFFF
"""Like ss, leave out ssthresh while it is still the initial "arbitrarily high" value."""


def _num(value: float) -> str:
    """Render a number with at most three decimals and no trailing zeros (``0.2``, ``200``)."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _duration(ms: float) -> str:
    """Render a timer's remaining time as ss does: ``180ms``, ``59.5sec``, ``2min``."""
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{_num(ms / 1000)}sec"
    return f"{_num(ms / 60_000)}min"


def _tcp_details(row: Mapping[str, Any]) -> str:
    """Return the details line ``ss -tin`` prints under a TCP connection."""
    parts: list[str] = []
    if row.get("timestamps"):
        parts.append("ts")
    if row.get("sack"):
        parts.append("sack")
    if row.get("congestion"):
        parts.append(str(row["congestion"]))
    wscale = row.get("wscale")
    if wscale:
        parts.append(f"wscale:{wscale[0]},{wscale[1]}")
    if row.get("rto_ms") is not None:
        parts.append(f"rto:{_num(row['rto_ms'])}")
    if row.get("srtt_ms") is not None:
        parts.append(f"rtt:{_num(row['srtt_ms'])}/{_num(row.get('rttvar_ms') or 0.0)}")
    mss = row.get("mss")
    parts.append(f"mss:{mss}")
    if row.get("advmss") is not None:
        parts.append(f"advmss:{row['advmss']}")
    if row.get("cwnd_segments") is not None:
        parts.append(f"cwnd:{row['cwnd_segments']}")
    ssthresh = row.get("ssthresh")
    if ssthresh is not None and mss and ssthresh // mss < _SSTHRESH_SHOWN_BELOW:
        parts.append(f"ssthresh:{ssthresh // mss}")
    for key in ("bytes_sent", "bytes_acked", "bytes_received", "snd_wnd", "rcv_wnd"):
        if row.get(key) is not None:
            parts.append(f"{key}:{row[key]}")
    if row.get("in_flight"):
        parts.append(f"unacked:{row['in_flight']}B")
    if row.get("unsent"):
        parts.append(f"notsent:{row['unsent']}")
    if row.get("retries"):
        parts.append(f"retrans:{row['retries']}")
    if row.get("in_recovery"):
        parts.append(f"recovery:{row.get('recovery', 'yes')}")
    if row.get("sack_blocks"):
        parts.append(f"sacked:{row['sack_blocks']}/{row.get('sacked_bytes', 0)}B")
    if row.get("ooo_ranges"):
        parts.append(f"ooo:{row['ooo_ranges']}/{row.get('ooo_bytes', 0)}B")
    timers = row.get("timers") or {}
    if timers:
        listed = ",".join(f"({name},{_duration(ms)})" for name, ms in timers.items())
        parts.append(f"timers:{listed}")
    return " ".join(parts)


def format_sockets(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render ``Stack.sockets()`` rows as an ``ss -tuanie``-like table.

    One line per socket (Netid, State, Recv-Q, Send-Q, local and peer address); a TCP
    connection gets a second, indented line of ``ss -tin`` style details.
    """
    table = [
        (
            str(r["proto"]),
            str(r["state"]),
            str(r["recv_q"]),
            str(r["send_q"]),
            str(r["local"]),
            str(r["peer"]),
        )
        for r in rows
    ]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(_COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if h in _NUMERIC else c.ljust(w)
            for c, w, h in zip(cells, widths, _COLUMNS, strict=True)
        ]
        return " ".join(out).rstrip()

    lines = [line(_COLUMNS)]
    for cells, row in zip(table, rows, strict=True):
        lines.append(line(cells))
        if row["proto"] == "tcp" and "mss" in row:
            lines.append("\t " + _tcp_details(row))
    return "\n".join(lines) + "\n"


def format_counters(
    items: Sequence[tuple[str, int]], deltas: Mapping[str, int] | None = None
) -> str:
    """Render counters like ``netstat -s``, grouped by the first component of their names.

    Each group gets a heading, then aligned ``name value`` lines; ``deltas`` (per-second
    changes keyed by full counter name) adds a column. Groups and names keep the order of
    ``items``; a counter missing from ``deltas`` gets an empty change column.
    """
    groups: dict[str, list[tuple[str, str, int]]] = {}
    for name, value in items:
        head, _, rest = name.partition(".")
        groups.setdefault(head, []).append((name, rest or name, value))
    if not groups:
        return ""
    entries = [e for group in groups.values() for e in group]
    name_w = max(len(short) for _, short, _ in entries)
    value_w = max(len(str(value)) for _, _, value in entries)
    lines: list[str] = []
    for head, group in groups.items():
        lines.append(f"{head}:")
        for name, short, value in group:
            text = f"    {short.ljust(name_w)}  {str(value).rjust(value_w)}"
            delta = deltas.get(name) if deltas is not None else None
            if delta is not None:
                text += f"  {delta:+d}/s"
            lines.append(text.rstrip())
    return "\n".join(lines) + "\n"
