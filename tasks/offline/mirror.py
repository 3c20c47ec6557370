"""`data_files` for the local tasks' YAMLs, resolved under $VISTOG_DATA_DIR when lmms-eval builds the task.

A YAML writes `data_files: !function mirror.gqa_local`; lmms-eval's `!function` loader execs this file and reads the
attribute `gqa_local`, which the module-level __getattr__ below computes from the mirror at that moment. A missing
mirror raises vistog_bench.run.offline_data.MissingLocalData with a message that says what to copy where.
"""

from vistog_bench.run.offline_data import LOCAL_TASKS, data_files


def __getattr__(task_name: str):
    if task_name not in LOCAL_TASKS:
        raise AttributeError(f"{task_name!r} is not a local task (vistog_bench.run.offline_data.LOCAL_TASKS)")
    return data_files(task_name)
