"""Starting and stopping the processes of a run: `testbed run`, `aggregator`, `client`, `keys`."""
