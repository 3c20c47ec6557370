"""Test material built from configs, nothing downloaded: for tests and benchmarks, never imported by the product.

- `tiny_models`: tiny random-weight LLaVA-1.5 models and a word-level processor;
- `hub_checkpoints`: tiny checkpoints in the published hub layouts (`python -m vistog_bench.testing.hub_checkpoints`);
- `hub_checkpoints_families`: the same for LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL;
- `fixtures`: tiny local mirrors of the offline tasks' datasets (`python -m vistog_bench.testing.fixtures`).
"""
