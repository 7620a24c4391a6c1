"""The command line (`meter-collector VERB`): parse, call the daemon's parts or the simulator, render."""
