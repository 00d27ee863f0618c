"""`corral up` / `corral down`: the parts of the one-command demo (see corral.dev).

model: where the example sessions' model calls go (the fake model or the real API);
examples: the example sessions, fitted to the local node, and when they are ready;
install: the Helm chart, storage, the demo user; steps: the progress display.
"""
