"""Simulated meters and the demo: the server side of each protocol (Modbus, DL/T 645, CJ/T 188 on TCP
and serial lines), for `meter-collector simulate`, `demo`, the tests and the benchmarks. The daemon
never imports this package."""
