"""The national data-centre uplink (住建部 2008 分项能耗数据传输技术导则, JGJ/T 285-2014 附录E): the
protocol core, independent of the daemon. variant: the dialect options; frame: the TCP frame;
crypto: AES-128 and the MD5 login; messages: the XML packets; session: one connection's client.
docs/datacenter.md describes the protocol with its sources."""
