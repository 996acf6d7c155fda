"""The client role: one OS process per emulated device, training its shard to the depth it chooses."""
