"""netstack: a pure-Python, sans-I/O userspace TCP/IP stack modelled on gVisor's netstack.

The package has no runtime dependencies. The one object an application holds is
:class:`netstack.stack.Stack`; packets enter through a link endpoint and leave through it.
"""

from netstack.errors import ParseError

__all__ = ["ParseError"]
__version__ = "0.1.0"
