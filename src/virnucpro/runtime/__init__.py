"""How the models run: planning, devices, batching, the worker processes and the engines.

- `protocol`: what crosses between the parent and a worker (specs, settings, plan, units,
  results, the pipe channel), torch-free;
- `plan`: the one `RuntimeConfig` that predict and train share, the models it resolves,
  the worker specs, and what goes into a run's fingerprint;
- `devices`: device selection, precision rules and the token budget rules; `host`: the CPUs
  this process may use;
- `units`: record units (long records cut into parts), shard selection and saved unit
  results (resume, merge); `batching`: frame units (train) and token-budget batches;
- `serve`: a worker process's loop (chunk, translate, score, render a unit);
- `worker`: the torch backend a worker serves with: its models and how it scores frames;
- `compile`: regional `torch.compile` of the encoder layers, with its start-up warm-up;
- `engine`: the worker processes and their pipes, the settle handshake, the feeder and
  ordered results;
- `ray_engine`: the same contract on Ray actors anywhere in a cluster;
- `cpu`: the CPU fast path (oneDNN linears, malloc) and a worker's process settings.
"""
