"""Network layer: IPv4, IPv6 (with fragmentation and reassembly) and ICMP for both families."""
