"""Protocols and meter models: knows nothing of scheduling, SQLite or MQTT."""
