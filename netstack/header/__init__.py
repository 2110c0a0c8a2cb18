"""Wire formats: one module per protocol. Pure functions and small records; no state, no I/O.

Parsers check lengths once and then read fields with precompiled ``struct.Struct`` objects; on
any bad input they raise :class:`netstack.errors.ParseError` and nothing else. Builders are the
inverse: ``parse(build(x)) == x``.
"""
