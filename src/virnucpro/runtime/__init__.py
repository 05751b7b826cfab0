"""How the models run: planning, devices, batching, the worker processes and the engines.

- `plan`: the one `RuntimeConfig` that predict and train share, the models it resolves,
  the worker specs, and what goes into a run's fingerprint;
- `devices`: device selection, precision rules and the ESM-2 token budget rule;
- `batching`: work units of whole records, token-budget batches inside them;
- `worker`: the one worker (a spawned process per device) and how it scores a unit;
- `engine`: the process pool, the settle handshake, the feeder and ordered results;
- `ray_engine`: the same contract on Ray actors anywhere in a cluster;
- `units`: the unit stream, shard selection and saved unit results (resume, merge);
- `cpu`: the CPU fast path (oneDNN linears, malloc) and a worker's process settings.
"""
