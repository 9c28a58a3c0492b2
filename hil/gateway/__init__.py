"""The hardware gateway: wire protocol v1 in front of pumps, heaters and sensors on Modbus TCP / OPC UA.

``bioimp gateway GATEWAY.toml``: :mod:`hil.gateway.config` (the file), :mod:`hil.gateway.drivers`
(Modbus, OPC UA), :mod:`hil.gateway.backend` (a :class:`~hil.backend.PlantBackend` over the drivers),
served by :func:`hil.server.serve_backend` like the simulated plant.
"""
