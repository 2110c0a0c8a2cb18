"""olm's settings: defaults, a TOML file, OLM_* environment variables and command-line flags.

Precedence, highest first: command-line flags, then environment variables, then the TOML file,
then the defaults. Every value is checked where it is read, and a :class:`ConfigError` names
its source so the user can find it::

    config.toml:7: field 'policy': must be one of sequential, race, round-robin
    environment OLM_TIMEOUT: must be a number, not 'fast'
    --max-inflight: must be at least 1

The TOML file has one key per setting, spelt like the field (``max_inflight = 512``), and a
``[cache]`` table for the cache's settings (``size = 50000``), which are ``cache.size`` in
messages, ``OLM_CACHE_SIZE`` in the environment and ``--cache-size`` on the command line.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from olm.dns.cache import CacheSettings
from olm.dns.localfiles import DataError, RecordSpec, parse_records
from olm.dns.rdata import RdataError, name_from_text
from olm.dns.upstream import (
    Policy,
    Upstream,
    UpstreamConfigError,
    parse_upstream,
    resolv_conf_upstreams,
    upstream_from,
)

__all__ = ["ConfigError", "Settings", "load_settings"]

_IFNAMSIZ = 16  # linux/if.h: interface names are at most 15 characters
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is invalid; the message starts with where it came from."""


@dataclass(frozen=True, slots=True)
class SplitSettings:
    """A ``[[split]]`` entry: names under ``suffix`` go to their own upstream group."""

    suffix: str
    upstreams: tuple[Any, ...]
    policy: str = Policy.SEQUENTIAL.value


@dataclass(frozen=True, slots=True)
class ViewSettings:
    """A ``[[views]]`` entry: a named set of client prefixes and what they choose.

    ``upstreams`` (with ``policy``): the group that answers these clients; ``blocklists``: the
    names of the ``[block]`` lists that apply to them (None: all of them).
    """

    name: str
    clients: tuple[str, ...]
    upstreams: tuple[Any, ...] = ()
    policy: str = Policy.SEQUENTIAL.value
    blocklists: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class BlockSettings:
    """``[block]``: blocklists (files or URLs), an allowlist, and the answer for blocked names.

    ``answer`` is ``nxdomain``, ``refused``, ``null`` (0.0.0.0 and ::) or addresses to give.
    """

    lists: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    answer: tuple[str, ...] = ("nxdomain",)
    ttl: int = 60
    refresh: float = 86400.0


@dataclass(frozen=True, slots=True)
class FakeIpSettings:
    """``[fake_ip]``: answer matching names with addresses from a pool (TTL 1)."""

    enabled: bool = False
    ipv4_range: str = "198.18.0.0/15"
    ipv6_range: str | None = None
    suffixes: tuple[str, ...] = ()  # empty: every name (minus ``exclude``)
    exclude: tuple[str, ...] = ()
    state_file: str | None = None


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """``[health]``: when an upstream is down, how it is probed back, how often to explore.

    ``explore``: the ``fastest`` policy sends one query in this many first to another upstream.
    """

    down_after: int = 3
    probe_interval: float = 5.0
    probe_max: float = 60.0
    explore: int = 20


@dataclass(frozen=True, slots=True)
class FastestAddrSettings:
    """``[fastest_addr]``: put first (or alone) the address that accepts a connection first."""

    enabled: bool = False
    ports: tuple[int, ...] = (443, 80)
    budget: float = 0.2
    mode: str = "first"
    max_probes: int = 8
    cache_ttl: float = 60.0


@dataclass(frozen=True, slots=True)
class QueryLogSettings:
    """``[query_log]``: one JSON line per answered query, off by default (names are private).

    Clients are written as their ``ipv4_prefix``/``ipv6_prefix`` network (the full address
    by default); the file is rotated at ``max_bytes``, keeping ``backups`` old files.
    """

    enabled: bool = False
    path: str = "/var/log/olm/queries.jsonl"
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    ipv4_prefix: int = 32
    ipv6_prefix: int = 128


@dataclass(slots=True)
class Settings:
    """Every setting of olm, already checked."""

    tun: str = "olm0"
    addresses: list[str] = field(default_factory=lambda: ["10.30.30.30", "fd30:30:30::30"])
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:53", "[::1]:53"])
    upstreams: list[Any] = field(default_factory=list)  # URLs, host[:port], or tables
    bootstrap: list[str] = field(default_factory=list)
    policy: str = Policy.SEQUENTIAL.value
    timeout: float = 2.0
    deadline: float = 5.0
    max_inflight: int = 256
    tcp_idle_timeout: float = 10.0
    tcp_message_timeout: float = 5.0
    tcp_max_connections: int = 64
    tcp_max_inflight: int = 16
    pcap: str | None = None
    log_level: str = "INFO"
    mtu: int = 1500
    records_files: list[str] = field(default_factory=list)
    records: list[RecordSpec] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    auto_ptr: bool = False
    local_negative_ttl: int = 60
    lines_file: str | None = None
    hosts_files: list[str] = field(default_factory=list)
    hosts_ttl: int = 300
    split: list[SplitSettings] = field(default_factory=list)
    private_reverse_upstreams: list[Any] = field(default_factory=list)
    views: list[ViewSettings] = field(default_factory=list)
    state_dir: str = "/var/lib/olm"
    watch_interval: float = 2.0
    cache: CacheSettings = field(default_factory=CacheSettings)
    block: BlockSettings = field(default_factory=BlockSettings)
    fake_ip: FakeIpSettings = field(default_factory=FakeIpSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    fastest_addr: FastestAddrSettings = field(default_factory=FastestAddrSettings)
    #: The control socket of ``olm inspect`` and ``olm trace``: a path, "auto" for
    #: ``olm.control.default_path()`` (``/run/olm/olm.sock`` as root), or "" for none.
    control: str = "auto"
    #: Where ``/metrics`` is served (``ADDR:PORT``); None: no metrics.
    metrics: str | None = None
    query_log: QueryLogSettings = field(default_factory=QueryLogSettings)

    @property
    def data_files(self) -> list[str]:
        """The local files whose changes rebuild the chain (records, lines, hosts, lists)."""
        files = [*self.records_files, *self.hosts_files]
        if self.lines_file:
            files.append(self.lines_file)
        files += [item for item in self.block.lists if "://" not in item]
        files += [item for item in self.block.allow if "/" in item and "://" not in item]
        return files

    def upstream_list(self, resolv_conf: str | Path = "/etc/resolv.conf") -> list[Upstream]:
        """Return the configured upstreams, or the nameservers of ``resolv_conf`` if none are.

        The service addresses are never used as upstreams (the proxy would ask itself).
        Raises :class:`ConfigError` when there is no usable upstream.
        """
        if self.upstreams:
            own = {ipaddress.ip_address(a) for a in self.addresses}
            chosen = [upstream_from(spec) for spec in self.upstreams]
            for upstream in chosen:
                if upstream.is_ip and upstream.address in own:
                    raise ConfigError(f"upstreams: {upstream} is one of the service addresses")
                if not upstream.is_ip and not self.bootstrap:
                    raise ConfigError(
                        f"upstreams: {upstream} names a host: set bootstrap resolvers to find "
                        'its address (bootstrap = ["192.0.2.53"])'
                    )
            return chosen
        try:
            return resolv_conf_upstreams(resolv_conf, exclude=self.addresses)
        except UpstreamConfigError as exc:
            raise ConfigError(f"upstreams: {exc}") from None


# -- value checkers: each takes the raw value and returns the checked one or raises ValueError --


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def _tun(value: Any) -> str:
    name = _text(value)
    if not name or len(name) >= _IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"must be an interface name of 1 to {_IFNAMSIZ - 1} characters")
    return name


def _list(value: Any) -> list[str]:
    if isinstance(value, str):  # environment and flags: comma-separated
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, not {value!r}")
    return list(value)


def _addresses(value: Any) -> list[str]:
    items = _list(value)
    if not items:
        raise ValueError("must name at least one address")
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return out


def _listen(value: Any) -> list[str]:
    """Listen addresses of ``olm serve``: ``IP:PORT``, IPv6 as ``[addr]:port``."""
    items = _list(value)
    if not items:
        raise ValueError("must name at least one address")
    for item in items:
        try:
            parsed = parse_upstream(item)
        except UpstreamConfigError as exc:
            raise ValueError(str(exc)) from None
        if not parsed.is_ip or parsed.scheme != "udp":
            raise ValueError(f"{item!r}: listen on IP:PORT")
    return items


def _metrics(value: Any) -> str | None:
    """``ADDR:PORT`` (IPv6 as ``[addr]:port``), or a bare port on loopback; "" turns it off."""
    text = _text(value)
    if not text or text.lower() in ("off", "none"):
        return None
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    try:
        parsed = parse_upstream(text)
    except UpstreamConfigError as exc:
        raise ValueError(str(exc)) from None
    if not parsed.is_ip or parsed.scheme != "udp" or ":" not in text.rpartition("]")[2]:
        raise ValueError(f"{text!r}: give ADDR:PORT, e.g. 127.0.0.1:9153")
    return text


def _upstreams(value: Any) -> list[Any]:
    """Upstreams: URLs or ``host[:port]`` (comma-separated in flags), or TOML tables."""
    items: list[Any] = (
        list(value) if isinstance(value, Sequence) and not isinstance(value, str) else _list(value)
    )
    for item in items:
        if not isinstance(item, str | Mapping):
            raise ValueError(f"an upstream is a URL or a table, not {item!r}")
        try:
            upstream = upstream_from(item)
        except UpstreamConfigError as exc:
            raise ValueError(str(exc)) from None
        if upstream.socks5 and upstream.scheme == "quic":
            raise ValueError(f"{upstream}: QUIC (UDP) cannot go through a SOCKS5 proxy")
    return items


def _bootstrap(value: Any) -> list[str]:
    """Bootstrap resolvers: plain DNS at IP addresses (they find the upstreams' addresses)."""
    items = _list(value)
    for item in items:
        try:
            upstream = parse_upstream(item)
        except UpstreamConfigError as exc:
            raise ValueError(str(exc)) from None
        if not upstream.is_ip or upstream.scheme != "udp":
            raise ValueError(f"{item!r}: a bootstrap resolver is an IP address[:port]")
    return items


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _text(value)
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return check


_policy = _choice(*(p.value for p in Policy))


def _number(low: float, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"must be a number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {value!r}")
    if not value > low:
        raise ValueError(f"must be greater than {low:g}")
    return float(value)


def _integer(low: int, high: int, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"must be an integer, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(
            f"must be from {low} to {high}" if high < 2**31 else f"must be at least {low}"
        )
    return value


def _seconds(value: Any) -> float:
    return _number(0, value)


def _count(value: Any) -> int:
    return _integer(1, 2**31, value)


def _size(value: Any) -> int:
    return _integer(1, 2**31, value)


def _ttl(value: Any) -> int:
    return _integer(0, 2**31 - 1, value)  # RFC 2181 section 8: TTLs are 31-bit


def _failure_ttl(value: Any) -> int:
    return _integer(1, 300, value)  # RFC 9520 section 3.2: at least 1 s, at most 5 minutes


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, not {value!r}")


def _names(value: Any) -> list[str]:
    """Domain names (``*.name`` for a subtree): each must encode (RFC 1035 2.3.4)."""
    items = _list(value)
    for item in items:
        try:
            name_from_text(item.removeprefix("*.") if item != "*" else item)
        except RdataError as exc:
            raise ValueError(f"{item!r}: {exc.message}") from None
    return items


def _paths(value: Any) -> list[str]:
    return [item for item in _list(value) if item]


def _network(version: int, value: Any) -> str:
    text = _text(value)
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv{version} prefix (host bits must be 0)") from None
    if network.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} prefix")
    return str(network)


def _optional_network6(value: Any) -> str | None:
    return _network(6, value) if _text(value) else None


def _ports(value: Any) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError("must be a non-empty list of ports")
    return tuple(_integer(1, 65535, item) for item in items)


def _block_answer(value: Any) -> tuple[str, ...]:
    items = _list(value)
    if len(items) == 1 and items[0].lower() in ("nxdomain", "refused", "null"):
        return (items[0].lower(),)
    if not items:
        raise ValueError("must be nxdomain, refused, null, or addresses")
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(
                f"{item!r}: must be nxdomain, refused, null, or IP addresses"
            ) from None
    return tuple(items)


def _split_entry(value: Any) -> SplitSettings:
    """``suffix=upstream[,upstream...][@policy]`` (flags, environment) or a table."""
    if isinstance(value, str):
        suffix, sep, rest = value.partition("=")
        if not sep:
            raise ValueError(f"{value!r}: write SUFFIX=UPSTREAM[,UPSTREAM...][@POLICY]")
        ups, _, policy = rest.partition("@")
        value = {"suffix": suffix, "upstreams": ups, **({"policy": policy} if policy else {})}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table with suffix and upstreams, not {value!r}")
    unknown = set(value) - {"suffix", "upstreams", "policy"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: suffix, upstreams, policy)")
    suffix = _names([value.get("suffix", "")])[0] if value.get("suffix") else ""
    if not suffix:
        raise ValueError("suffix is missing")
    upstreams = _upstreams(value.get("upstreams", []))
    if not upstreams:
        raise ValueError(f"suffix {suffix!r}: upstreams are missing")
    policy = _policy(value.get("policy", Policy.SEQUENTIAL.value))
    return SplitSettings(suffix, tuple(upstreams), policy)


def _splits(value: Any) -> list[SplitSettings]:
    if isinstance(value, str):
        value = [part for part in value.split(";") if part.strip()]
    if not isinstance(value, Sequence):
        raise ValueError(f"must be a list of split entries, not {value!r}")
    return [_split_entry(item) for item in value]


def _view_entry(value: Any) -> ViewSettings:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table, not {value!r}")
    known = {"name", "clients", "upstreams", "policy", "blocklists"}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
    name = _text(value.get("name", ""))
    if not name:
        raise ValueError("name is missing")
    clients = _list(value.get("clients", []))
    if not clients:
        raise ValueError(f"view {name!r}: clients are missing")
    for client in clients:
        try:
            ipaddress.ip_network(client, strict=False)
        except ValueError:
            raise ValueError(f"view {name!r}: {client!r} is not an IP prefix") from None
    upstreams = _upstreams(value.get("upstreams", []))
    lists = value.get("blocklists")
    return ViewSettings(
        name,
        tuple(clients),
        tuple(upstreams),
        _policy(value.get("policy", Policy.SEQUENTIAL.value)),
        tuple(_list(lists)) if lists is not None else None,
    )


def _views(value: Any) -> list[ViewSettings]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError("must be [[views]] tables")
    views = [_view_entry(item) for item in value]
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError("view names must be unique")
    return views


def _records(value: Any) -> list[RecordSpec]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError("must be [[records]] tables")
    try:
        return parse_records(enumerate(value, 1), "records")
    except DataError as exc:
        raise ValueError(str(exc).removeprefix("records:")) from None


def _mtu(value: Any) -> int:
    return _integer(68, 65535, value)  # RFC 791 section 3.2: every IPv4 link carries 68 bytes


def _optional_path(value: Any) -> str | None:
    text = _text(value)
    return text or None


def _log_level(value: Any) -> str:
    text = _text(value).upper()
    if text not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return text


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "tun": _tun,
    "addresses": _addresses,
    "listen": _listen,
    "upstreams": _upstreams,
    "bootstrap": _bootstrap,
    "policy": _policy,
    "timeout": _seconds,
    "deadline": _seconds,
    "max_inflight": _count,
    "tcp_idle_timeout": _seconds,
    "tcp_message_timeout": _seconds,
    "tcp_max_connections": _count,
    "tcp_max_inflight": _count,
    "pcap": _optional_path,
    "log_level": _log_level,
    "mtu": _mtu,
    "cache.enabled": _bool,
    "cache.size": _size,
    "cache.max_bytes": _size,
    "cache.min_ttl": _ttl,
    "cache.max_ttl": _ttl,
    "cache.max_negative_ttl": _ttl,
    "cache.failure_ttl": _failure_ttl,
    "cache.serve_stale": _bool,
    "cache.stale_max_age": _ttl,
    "cache.prefetch": _bool,
    "records_files": _paths,
    "records": _records,
    "zones": _names,
    "deny": _names,
    "auto_ptr": _bool,
    "local_negative_ttl": _ttl,
    "lines_file": _optional_path,
    "hosts_files": _paths,
    "hosts_ttl": _ttl,
    "split": _splits,
    "private_reverse_upstreams": _upstreams,
    "views": _views,
    "state_dir": _text,
    "watch_interval": _seconds,
    "block.lists": lambda v: tuple(_paths(v)),
    "block.allow": lambda v: tuple(_list(v)),
    "block.answer": _block_answer,
    "block.ttl": _ttl,
    "block.refresh": _seconds,
    "fake_ip.enabled": _bool,
    "fake_ip.ipv4_range": lambda v: _network(4, v),
    "fake_ip.ipv6_range": _optional_network6,
    "fake_ip.suffixes": lambda v: tuple(_names(v)),
    "fake_ip.exclude": lambda v: tuple(_names(v)),
    "fake_ip.state_file": _optional_path,
    "health.down_after": _count,
    "health.probe_interval": _seconds,
    "health.probe_max": _seconds,
    "health.explore": lambda v: _integer(0, 1_000_000, v),
    "fastest_addr.enabled": _bool,
    "fastest_addr.ports": _ports,
    "fastest_addr.budget": _seconds,
    "fastest_addr.mode": _choice("first", "only"),
    "fastest_addr.max_probes": _count,
    "fastest_addr.cache_ttl": _seconds,
    "control": lambda v: "" if _text(v).lower() in ("off", "none") else _text(v),
    "metrics": _metrics,
    "query_log.enabled": _bool,
    "query_log.path": _text,
    "query_log.max_bytes": _size,
    "query_log.backups": lambda v: _integer(0, 100, v),
    "query_log.ipv4_prefix": lambda v: _integer(0, 32, v),
    "query_log.ipv6_prefix": lambda v: _integer(0, 128, v),
}
_TABLES: dict[str, Any] = {
    "cache": CacheSettings,
    "block": BlockSettings,
    "fake_ip": FakeIpSettings,
    "health": HealthSettings,
    "fastest_addr": FastestAddrSettings,
    "query_log": QueryLogSettings,
}
#: Settings written as arrays of tables in TOML (``[[split]]``): checked whole, errors name
#: the entry (``split[2]``) and the line of its header.
_ARRAYS = frozenset({"records", "split", "views"})
assert set(_CHECKS) == {f.name for f in fields(Settings) if f.name not in _TABLES} | {
    f"{table}.{f.name}" for table, kind in _TABLES.items() for f in fields(kind)
}


def flag_name(name: str) -> str:
    """Return the command-line flag of a setting (``cache.min_ttl`` -> ``--cache-min-ttl``)."""
    return "--" + name.replace(".", "-").replace("_", "-")


def env_name(name: str) -> str:
    """Return the environment variable of a setting (``cache.size`` -> ``OLM_CACHE_SIZE``)."""
    return "OLM_" + name.replace(".", "_").upper()


def _key_line(text: str, key: str, table: str = "") -> int | None:
    """Return the 1-based line where ``key`` is assigned in TOML ``text`` (in ``[table]``)."""
    quoted = re.escape(key)
    pattern = re.compile(rf"""^\s*(?:{quoted}|"{quoted}"|'{quoted}')\s*=""")
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        found = header.match(line)
        if found:
            current = found.group(1)
        elif current == table and pattern.match(line):
            return number
    return None


def _from_file(path: Path) -> dict[str, Any]:
    """Read and check the TOML file; errors are prefixed ``file:line:``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None  # carries "(at line L, column C)"
    values: dict[str, Any] = {}
    items: list[tuple[str, str, Any]] = []
    for key, raw in data.items():
        if key in _TABLES and isinstance(raw, dict):
            items.extend((key, sub, value) for sub, value in raw.items())
        elif key in _ARRAYS and isinstance(raw, list):
            values[key] = _array_from_file(key, raw, text, path)
        else:
            items.append(("", key, raw))
    for table, key, raw in items:
        name = f"{table}.{key}" if table else key
        line = _key_line(text, key, table)
        where = f"{path}:{line}" if line is not None else str(path)
        check = _CHECKS.get(name)
        if check is None:
            known = ", ".join(_CHECKS)
            raise ConfigError(f"{where}: unknown field {name!r} (known fields: {known})")
        if isinstance(raw, str) and name in ("addresses", "upstreams", "listen"):
            raise ConfigError(f"{where}: field {name!r}: must be a list of strings")
        try:
            values[name] = check(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: field {name!r}: {exc}") from None
    return _relative_to(path.parent, values)


#: Settings naming files: written relative in a settings file, they are relative to its folder.
_PATH_FIELDS = (
    "records_files",
    "hosts_files",
    "lines_file",
    "state_dir",
    "fake_ip.state_file",
    "control",
    "query_log.path",
)


def _relative_to(base: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Make the relative paths of a settings file's values relative to its folder."""

    def place(item: str) -> str:
        if not item or item == "auto" or "://" in item or Path(item).is_absolute():
            return item
        return str(base / item)

    for name in _PATH_FIELDS:
        value = values.get(name)
        if isinstance(value, str):
            values[name] = place(value)
        elif isinstance(value, list):
            values[name] = [place(item) for item in value]
    if "block.lists" in values:
        values["block.lists"] = tuple(place(item) for item in values["block.lists"])
    if "block.allow" in values:
        values["block.allow"] = tuple(
            place(item) if "/" in item else item for item in values["block.allow"]
        )
    return values


def _array_from_file(key: str, raw: list[Any], text: str, path: Path) -> Any:
    """Check an array of tables entry by entry, naming the entry's line in errors."""
    headers = [
        number
        for number, line in enumerate(text.splitlines(), 1)
        if re.match(rf"\s*\[\[\s*{re.escape(key)}\s*\]\]", line)
    ]
    if key == "records":
        try:
            return parse_records(
                [(headers[i] if i < len(headers) else 1, item) for i, item in enumerate(raw)],
                path,
                text,
            )
        except DataError as exc:
            raise ConfigError(str(exc)) from None
    check = _CHECKS[key]
    for i, item in enumerate(raw):
        try:
            check([item])
        except ValueError as exc:
            line = headers[i] if i < len(headers) else _key_line(text, key)
            where = f"{path}:{line}" if line is not None else str(path)
            raise ConfigError(f"{where}: field '{key}[{i + 1}]': {exc}") from None
    try:
        return check(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: field {key!r}: {exc}") from None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Build the settings from the sources in order of precedence.

    ``cli`` maps field names to flag values (None or absent: not given); string values are
    parsed like environment values. ``environ`` is searched for ``OLM_<FIELD>`` variables
    (pass ``os.environ``); ``config_file`` is a TOML file. Raises :class:`ConfigError`.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_file(Path(config_file)))
    for name, check in _CHECKS.items():
        variable = env_name(name)
        if environ is not None and variable in environ:
            try:
                values[name] = check(environ[variable])
            except ValueError as exc:
                raise ConfigError(f"environment {variable}: {exc}") from None
    for name, raw in (cli or {}).items():
        if raw is None:
            continue
        flag_check = _CHECKS.get(name)
        if flag_check is None:
            raise ConfigError(f"{flag_name(name)}: unknown setting")
        try:
            values[name] = flag_check(raw)
        except ValueError as exc:
            raise ConfigError(f"{flag_name(name)}: {exc}") from None
    return _build(values)


def _build(values: dict[str, Any]) -> Settings:
    """Make the Settings of checked values keyed by dotted name; check across fields."""
    top = {name: value for name, value in values.items() if "." not in name}
    tables: dict[str, Any] = {
        table: kind(
            **{
                name.partition(".")[2]: value
                for name, value in values.items()
                if name.startswith(table + ".")
            }
        )
        for table, kind in _TABLES.items()
    }
    settings = Settings(**top, **tables)
    cache = settings.cache
    if cache.min_ttl > cache.max_ttl:
        raise ConfigError(
            f"cache.min_ttl ({cache.min_ttl}) is above cache.max_ttl ({cache.max_ttl})"
        )
    health = settings.health
    if health.probe_interval > health.probe_max:
        raise ConfigError(
            f"health.probe_interval ({health.probe_interval}) is above health.probe_max "
            f"({health.probe_max})"
        )
    return settings
