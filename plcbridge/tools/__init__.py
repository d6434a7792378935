"""Tools around the daemon, never imported by it: the demo, the benchmark and its gate, the
generated documents, the model-manifest and camera commands. The runtime (plcbridge/*.py) reads
like the README's diagram; everything here is run from the CLI or by tests."""
