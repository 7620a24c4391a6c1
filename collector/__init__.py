"""meter-collector: reads meters on RS-485 and Ethernet and delivers every reading over MQTT."""

__version__ = "0.1.0"
