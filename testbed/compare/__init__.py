"""`testbed compare`: several strategies under the identical fleet, data and seeds, one table."""
