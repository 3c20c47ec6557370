"""vistog-bench: a benchmark and evaluation harness for visual-token reduction in multimodal LLMs.

Built around VisToG (visual token grouping, arXiv 2411.17773) on transformers' LLaVA-1.5, with training-free
baselines, an lmms-eval model adapter, a profiling layer, paper-style reports and regression checks.
"""

__version__ = "0.1.0"
