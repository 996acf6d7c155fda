"""The wire: versioned messages (msgpack envelope + raw tensor frames) over ZeroMQ. Never imports torch."""
