"""Network layer: IPv4, IPv6 (with fragmentation and reassembly) and ICMP for both families.

They see the stack through :class:`netstack.protocols.NetworkServices` and never import
``netstack.stack`` or ``netstack.transport`` (the import contracts in pyproject.toml).
"""
