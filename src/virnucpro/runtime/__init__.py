"""How the models run: planning, devices, batching, the worker processes and the engines.

- `plan`: the one `RuntimeConfig` that predict and train share, the models it resolves,
  the worker specs, and what goes into a run's fingerprint;
- `devices`: device selection, precision rules and the token budget rules;
- `batching`: work units of whole records, token-budget batches inside them;
- `worker`: the one worker (a spawned process per device) and how it scores a unit;
- `compile`: regional `torch.compile` of the encoder layers, with its start-up warm-up;
- `engine`: the process pool, the settle handshake, the feeder and ordered results;
- `ray_engine`: the same contract on Ray actors anywhere in a cluster;
- `units`: the unit stream, shard selection and saved unit results (resume, merge);
- `cpu`: the CPU fast path (oneDNN linears, malloc) and a worker's process settings.
"""
