"""Time-critical I/O: wire protocol v1, protocol server, ZeroMQ client, command line."""
