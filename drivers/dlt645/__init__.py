"""DL/T 645-2007 (and -1997 reads): the protocol of most electricity meters in China."""
