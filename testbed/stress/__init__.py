"""`testbed stress`: scripted faults and hostile input against a live run, with a verdict per check."""
