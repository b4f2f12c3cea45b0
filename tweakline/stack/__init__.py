"""The local stack: nats-server and the services as processes on one machine (``tweakline run/up``)."""
