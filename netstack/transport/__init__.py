"""Transport layer: UDP and TCP protocols with their endpoints."""
