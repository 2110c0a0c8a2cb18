"""Fuzz harnesses (atheris/libFuzzer) for netstack's parsers and its live receive path.

Every harness module ``fuzz.fuzz_<name>`` exposes ``test_one_input(data: bytes) -> None``,
importable without atheris (tests replay the seed corpora through it), and runs under libFuzzer
when executed as a script. ``fuzz/run`` runs chosen harnesses for a given time.
"""
