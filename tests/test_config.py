"""Settings: precedence of flags, environment, TOML file and defaults; errors name their source."""

from __future__ import annotations

from pathlib import Path

import pytest

from olm.config import ConfigError, Settings, load_settings
from olm.dns.upstream import Upstream


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.tun == "olm0" and s.addresses == ["10.30.30.30", "fd30:30:30::30"]
    assert s.policy == "sequential" and s.upstreams == [] and s.pcap is None


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'policy = "race"\ntimeout = 1.5\nmax_inflight = 10\nupstreams = ["127.0.0.1:5300"]\n',
    )
    env = {"OLM_POLICY": "round-robin", "OLM_TIMEOUT": "0.5", "OLM_UNRELATED": "x", "PATH": "/"}
    s = load_settings({"policy": "sequential", "mtu": None}, env, path)
    assert s.policy == "sequential"  # flag
    assert s.timeout == 0.5  # environment
    assert s.max_inflight == 10  # file
    assert s.upstreams == ["127.0.0.1:5300"]  # file
    assert s.deadline == 5.0 and s.mtu == 1500  # defaults (a None flag is "not given")


def test_env_lists_are_comma_separated() -> None:
    env = {"OLM_UPSTREAMS": "127.0.0.1:53, [::1]:5353", "OLM_ADDRESSES": "10.1.1.1"}
    s = load_settings(environ=env)
    assert s.upstreams == ["127.0.0.1:53", "[::1]:5353"]
    assert s.addresses == ["10.1.1.1"]
    assert s.upstream_list() == [Upstream("127.0.0.1", 53), Upstream("::1", 5353)]


def test_file_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, '# olm\ntun = "olm1"\n\n\n\n\npolicy = "quickest"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=path)
    assert str(err.value) == (
        f"{path}:7: field 'policy': must be one of sequential, race, round-robin, fastest"
    )


def test_file_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'tun = "olm1"\npolcy = "race"\n')
    with pytest.raises(ConfigError, match=r":2: unknown field 'polcy'"):
        load_settings(config_file=path)


def test_file_syntax_error_carries_position(tmp_path: Path) -> None:
    path = write(tmp_path, 'tun = "olm1"\npolicy = \n')
    with pytest.raises(ConfigError, match=r"config\.toml: .*line 2"):
        load_settings(config_file=path)


def test_file_type_errors(tmp_path: Path) -> None:
    path = write(tmp_path, 'upstreams = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match=r":1: field 'upstreams': must be a list"):
        load_settings(config_file=path)
    path = write(tmp_path, "mtu = true\n")
    with pytest.raises(ConfigError, match=r":1: field 'mtu': must be an integer"):
        load_settings(config_file=path)
    path = write(tmp_path, 'addresses = ["10.0.0.1", "nope"]\n')
    with pytest.raises(ConfigError, match=r"'nope' is not an IP address"):
        load_settings(config_file=path)


def test_env_error_names_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"OLM_POLICY": "quickest"})
    assert str(err.value) == (
        "environment OLM_POLICY: must be one of sequential, race, round-robin, fastest"
    )
    with pytest.raises(ConfigError, match=r"^environment OLM_TIMEOUT: must be a number"):
        load_settings(environ={"OLM_TIMEOUT": "fast"})
    with pytest.raises(ConfigError, match=r"^environment OLM_UPSTREAMS: 'dns\.exa mple'"):
        load_settings(environ={"OLM_UPSTREAMS": "dns.exa mple"})
    # A host name is fine as such, but needs bootstrap resolvers to find its address.
    with pytest.raises(ConfigError, match=r"tls://dns\.example:853 names a host"):
        load_settings(environ={"OLM_UPSTREAMS": "tls://dns.example"}).upstream_list()


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--max-inflight: must be at least 1$"):
        load_settings({"max_inflight": 0})
    with pytest.raises(ConfigError, match=r"^--tcp-idle-timeout: must be greater than 0$"):
        load_settings({"tcp_idle_timeout": "-1"})
    with pytest.raises(ConfigError, match=r"^--mtu: must be from 68 to 65535$"):
        load_settings({"mtu": 70000})
    with pytest.raises(ConfigError, match=r"^--tun: must be an interface name"):
        load_settings({"tun": "a-very-long-interface-name"})
    with pytest.raises(ConfigError, match=r"^--colour: unknown setting$"):
        load_settings({"colour": "blue"})


def test_log_level_and_pcap_normalised() -> None:
    s = load_settings({"log_level": "debug"}, {"OLM_PCAP": ""})
    assert s.log_level == "DEBUG" and s.pcap is None
    assert load_settings({"pcap": "/tmp/x.pcap"}).pcap == "/tmp/x.pcap"


def test_upstream_list_falls_back_to_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 10.30.30.30\nnameserver 127.0.0.53\n")
    assert Settings().upstream_list(conf) == [Upstream("127.0.0.53")]
    conf.write_text("nameserver fd30:30:30::30\n")
    with pytest.raises(ConfigError, match=r"^upstreams: no upstreams configured and no usable"):
        Settings().upstream_list(conf)
    with pytest.raises(ConfigError, match="is one of the service addresses"):
        Settings(upstreams=["10.30.30.30"]).upstream_list(conf)


def test_cache_table_env_and_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'upstreams = ["127.0.0.1"]\n\n[cache]\nsize = 500\nserve_stale = true\nmin_ttl = 10\n',
    )
    env = {"OLM_CACHE_SIZE": "700", "OLM_CACHE_PREFETCH": "false"}
    s = load_settings({"cache.max_ttl": "3600", "cache.enabled": None}, env, path)
    assert s.cache.size == 700  # environment over file
    assert s.cache.serve_stale and s.cache.min_ttl == 10  # file
    assert not s.cache.prefetch  # environment
    assert s.cache.max_ttl == 3600  # flag
    assert s.cache.enabled and s.cache.failure_ttl == 5  # defaults
    assert load_settings({"cache.enabled": False}).cache.enabled is False  # --no-cache


def test_cache_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "size = 5\n\n[cache]\nprefetch = true\nfailure_ttl = 900\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=path)
    # The line of failure_ttl in [cache], not of the top-level "size".
    assert str(err.value).startswith(f"{path}:1: unknown field 'size'")
    path = write(tmp_path, "[cache]\nprefetch = true\nfailure_ttl = 900\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=path)
    assert str(err.value) == f"{path}:3: field 'cache.failure_ttl': must be from 1 to 300"
    path = write(tmp_path, "[cache]\nsise = 5\n")
    with pytest.raises(ConfigError, match=r":2: unknown field 'cache.sise'"):
        load_settings(config_file=path)
    with pytest.raises(ConfigError, match="environment OLM_CACHE_SERVE_STALE: must be true"):
        load_settings(environ={"OLM_CACHE_SERVE_STALE": "maybe"})
    with pytest.raises(ConfigError, match="--cache-size: must be an integer"):
        load_settings({"cache.size": "many"})
    with pytest.raises(ConfigError, match=r"cache\.min_ttl \(100\) is above cache\.max_ttl"):
        load_settings({"cache.min_ttl": "100", "cache.max_ttl": "50"})


def test_the_example_settings_in_docs_load_and_build(tmp_path: Path) -> None:
    """docs/examples/olm.toml (the README's example) stays true: it loads and builds a chain."""
    from dataclasses import replace

    from netstack.clock import ManualClock
    from netstack.counters import Counters
    from olm.dns.pipeline import Pipeline

    example = Path(__file__).resolve().parent.parent / "docs" / "examples" / "olm.toml"
    settings = load_settings(config_file=example)
    assert settings.records_files == [str(example.parent / "records.json")]
    assert [s.suffix for s in settings.split] == ["corp.internal", "home.arpa"]
    assert settings.views[0].blocklists == ("ads", "adult")
    assert settings.fake_ip.enabled and settings.block.answer == ("nxdomain",)
    settings = replace(settings, state_dir=str(tmp_path))  # not /var/lib/olm in a test
    pipeline = Pipeline(settings, ManualClock(), Counters("dns"))
    chain = pipeline.build(settings)
    names = []
    handler = chain
    while handler.name != "unanswered":
        names.append(handler.name)
        handler = handler.next
    assert names == [
        "sanitise",
        "admission",
        "views",
        "records",
        "hosts",
        "block",
        "fake_ip",
        "split",
        "cache",
        "forward",
    ]
    pipeline.close()
