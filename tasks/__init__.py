"""vistog-bench's lmms-eval task folder, shipped in the wheel as `vistog_bench.tasks` (pyproject's package-dir).

lmms-eval reads it as files (YAMLs, `include:` templates, the utils.py / mirror.py that `!function` tags load by path);
this file only makes the folder a package, so `importlib.resources.files("vistog_bench.tasks")` finds it in an
editable install and in a wheel alike.
"""
