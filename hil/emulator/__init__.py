"""Hardware emulators: a simulated reactor behind Modbus TCP or OPC UA, for trying the gateway without
hardware (and for its tests). ``bioimp emulate modbus|opcua --model ...``."""
