"""Wire formats: one module per protocol. Pure functions and small records; no state, no I/O.

Each header has one validated parse, ``<Header>.parse(buf)``, used by every reader (the receive
path, the sniffer's summary, ``olm trace``, the offload code): it checks lengths once, reads the
fields with a precompiled ``struct.Struct`` and returns the header's record with named fields.
On any bad input it raises :class:`netstack.errors.ParseError` and nothing else. Builders are
the inverse: ``parse(build(x)) == x``.

The records are ``__slots__`` dataclasses that the parse fills in directly (a slot is the
cheapest attribute to read, and skipping ``__init__`` makes the record about as cheap to build
as a tuple); the immutable TCP options are a named tuple, which costs far less to build than a
frozen dataclass. ``benchmarks/header_parse.py`` measures both choices.

Code that must look at one field of a packet it does not parse (the TUN filter, segmentation
offload) reads it at the offsets the modules name, such as ``ipv4.IPV4_DST`` or
``tcp.TCP_FLAGS_AT``, rather than at numbers of its own.
"""
