"""CJ/T 188 (户用计量仪表数据传输): the protocol of most Chinese water, heat and gas meters on RS-485/M-Bus."""
