"""The daemon (`meter-collector run`): the data path from the buses to the broker.

    scheduler -> bus (one worker per bus; drivers/ read the meter) -> calibration, counters
      -> writer -> buffer (SQLite outbox) -> publisher (MQTT) ; health, clock, systemd, supervisor

docs/architecture.md draws it and says who may import whom.
"""
