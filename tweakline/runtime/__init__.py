"""The runtime every process shares: typed settings, dev PKI, the embedded nats-server, the bus
connection and topology, KV records, the object store, the service scaffold, health and TLS reload."""
