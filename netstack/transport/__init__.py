"""Transport layer: UDP and TCP protocols with their endpoints.

They see the stack through :class:`netstack.protocols.StackServices` and never import
``netstack.stack`` or ``netstack.network`` (the import contracts in pyproject.toml).
"""
