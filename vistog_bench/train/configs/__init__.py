"""accelerate config files for the trainer, named by the recipes that use them (package data)."""

from __future__ import annotations


def fsdp_launch_env(name: str = "fsdp2.yaml") -> dict[str, str]:
    """The environment `accelerate launch --config_file NAME` gives each process for the file's FSDP settings
    (accelerate/utils/launch.py `prepare_multi_gpu_env`: FSDP_<KEY>, the layer classes as
    FSDP_TRANSFORMER_CLS_TO_WRAP, booleans lower-case): set it to run the same FSDP under plain `torchrun`."""
    from accelerate.commands.config.config_args import load_config_from_file

    from ..recipes import accelerate_config_path

    fsdp = load_config_from_file(str(accelerate_config_path(name))).fsdp_config
    names = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}
    values = {names.get(k, k.upper()): str(v).lower() if isinstance(v, bool) else str(v) for k, v in fsdp.items()}
    return {"ACCELERATE_USE_FSDP": "true", **values}
