"""Modbus: codec, read planner, client transport (the only pymodbus import) and server side."""
