"""`vistog-bench run` and `vistog-bench tasks`: the sweep of methods x budgets x tasks through lmms-eval.

cli           the `run` subcommand (arguments -> RunConfig -> sweep -> summary, report)
config        RunConfig, its checks, what a resumed run keeps, the embedded default
sweep         plan the cells, refuse what cannot run, evaluate each cell, record it
tasks         task names and folders (ours: the top-level tasks/), pre-flight data checks, groups and limits
lmms_results  lmms-eval's results of one task -> the run's records
console       what third-party libraries print during a sweep goes to <run>/run.log
offline_data  the *_local tasks' mirrors on this machine (--data-dir)
"""
