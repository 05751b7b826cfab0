"""The models and their files.

- `dnabert`: DNABERT-S in plain PyTorch (names equal checkpoint keys) and its tokenizer;
- `esm`: ESM-2 loaded by `transformers.EsmModel`, run by our inference layers (q/k/v
  in one GEMM), pooling, fair-esm conversion;
- `classifier`: the VirNucPro MLP, read from the original pickles without running them;
- `safeload`: the restricted unpickler behind that;
- `store`: finding a run's models (local directory, hub cache, published classifier);
- `manifest`: the models directory's record of sizes and sha256;
- `download`: the only code that reaches the network;
- `info`: `virnucpro models info`.
"""
