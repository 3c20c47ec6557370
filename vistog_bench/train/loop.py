"""`train(config)`: one stage on accelerate; whatever `accelerate launch` or `torchrun` set up (one process, DDP,
FSDP, DeepSpeed ZeRO) is what runs; accelerate does the distribution and mixed precision.

Resumable: with `save_steps`, checkpoints.py writes `output_dir/checkpoints/checkpoint_<i>` (model, optimizer,
scheduler, every process's RNG states, and `TrainerState`: step, data position, loss history) as safetensors + JSON,
atomically; `resume_from_checkpoint` ("latest" or a folder) restores them and the data loader restarts at the same
sample, so the run continues as if it had not stopped. A loss that is not finite stops the run before it is applied,
and no model is written from it. The output folder is a normal Hugging Face checkpoint with the chat template
training rendered with (`chat_template.jinja`) and `training_log.jsonl`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from . import checkpoints
from .config import TrainConfig
from .data import (
    ModalityLengthGroupedSampler,
    RegionDataset,
    check_image_folder,
    collate_conversations,
    collate_regions,
    load_records,
)
from .stages import build_region_pretrainer, conversation_dataset, load_for_stage, set_trainable, store_frozen_in


@dataclass
class TrainerState:
    """What a resumable state holds beside model, optimizer, scheduler and RNG states (checkpoints.py)."""

    step: int = 0
    micro_batches_in_epoch: int = 0
    epoch_generator_state: object = None  # the data order's generator at the start of this epoch
    skipped: int = 0  # samples replaced: missing / unreadable image, image or answer tokens cut (all processes)
    losses: list = field(default_factory=list)
    log_lines: list = field(default_factory=list)
    llm_compute_dtype: str | None = None  # what the LLM's first decoder layer computed in, seen on the first batch

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, values: dict) -> None:
        for key, value in values.items():
            setattr(self, key, value)


class LossNotFinite(UsageError):
    """The run found a NaN / inf loss and stopped before applying it: exit 1, the work ran and found a problem."""

    exit_code = 1


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[float]
    skipped: int


def make_accelerator(config: TrainConfig):
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, ProjectConfiguration

    # trackers log under the output folder; resumable states are ours (checkpoints.py), not accelerate's save_state
    project = ProjectConfiguration(project_dir=config.output_dir)
    # accelerate sets up gloo over several CPU processes only when told to use the CPU (`accelerate launch --cpu`);
    # plain `torchrun` on a machine without an accelerator device says so here
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    if config.mixed_precision == "fp16" and not torch.accelerator.is_available():
        # accelerate sets up fp16 (autocast + GradScaler) on accelerator devices only: on a CPU it would train the
        # model's own dtypes unscaled. Refused before the Accelerator exists (its state is once per process)
        raise UsageError(
            "--mixed-precision fp16 needs a GPU: accelerate applies neither autocast nor a grad scaler on a CPU "
            "(bf16 runs there)"
        )
    # the plugin accelerate itself builds from `accelerate launch`'s FSDP_* variables (fsdp2.yaml)
    fsdp = FullyShardedDataParallelPlugin() if _asked_for("FSDP") else None
    accelerator = Accelerator(
        cpu=cpu_processes,
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=config.mixed_precision,
        log_with=list(config.report_to) or None,
        project_config=project,
        fsdp_plugin=fsdp,
    )
    if fsdp is not None and accelerator.distributed_type == DistributedType.MULTI_CPU and fsdp.fsdp_version == 2:
        # accelerate 1.15's AcceleratorState switches only accelerator devices to FSDP (state.py keeps MULTI_CPU for
        # gloo processes); torch's fully_shard runs over gloo, so the one missing step is done here: from now on
        # accelerate's own FSDP2 path (prepare -> fsdp2_prepare_model, get_state_dict, save_state) runs, as on GPUs.
        # PartialState too: every later AcceleratorState() copies PartialState's distributed_type over its own
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp
        if accelerator.mixed_precision != "no":  # what state.py's FSDP branch does next: FSDP2's MixedPrecisionPolicy
            fsdp.set_mixed_precision(accelerator.mixed_precision)
    for engine, kind in (("FSDP", DistributedType.FSDP), ("DEEPSPEED", DistributedType.DEEPSPEED)):
        if _asked_for(engine) and accelerator.distributed_type != kind:
            needs = "GPUs, or fsdp_version 2 on several CPU processes" if engine == "FSDP" else "GPUs"
            raise UsageError(
                f"the accelerate config asks for {engine} but accelerate set up "
                f"{accelerator.distributed_type.value} on {accelerator.device.type}; "
                f"{engine} needs {needs}"
            )
    return accelerator


def _asked_for(engine: str) -> bool:
    """`accelerate launch` with an FSDP / DeepSpeed config file sets ACCELERATE_USE_<engine>."""
    return os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() == "true"


def fsdp_units_on_llm_layers(accelerator, module) -> None:
    """FSDP shard units, unless the accelerate config names its own classes: each LLM decoder layer (the LLM holds
    almost every weight), everything else, the vision tower included, in the root unit. VisToG's vision path runs the
    encoder's layers through its own layer forward (model/vision.py), not through their module call, so an encoder
    layer of its own would never be gathered by its hooks."""
    from accelerate.utils import DistributedType

    if (
        accelerator.distributed_type != DistributedType.FSDP
        or accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap
    ):
        return
    layers = llm_decoder_layers(module)
    if layers is not None:
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = [type(layers[0]).__name__]


def llm_decoder_layers(module):
    """The LLM's decoder layers (a ModuleList) inside the module being trained, or None (the region pretrainer)."""
    return next((sub for name, sub in module.named_modules() if name.endswith("language_model.layers")), None)


def watch_llm_compute_dtype(module, state: TrainerState) -> None:
    """Record, once, the dtype of the hidden states the LLM's first decoder layer returns: the precision training
    really computes in (FSDP2's MixedPrecisionPolicy casts parameters and inputs per unit, autocast casts per op; which
    of the two accelerate applies has changed between its releases, so the run says what happened)."""
    layers = llm_decoder_layers(module)
    if layers is None:
        return

    def seen(_layer, _inputs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, D]
        state.llm_compute_dtype = str(hidden.dtype).removeprefix("torch.")
        handle.remove()

    handle = layers[0].register_forward_hook(seen)


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def parameters_total(module) -> int:
    """Parameter elements of the whole model, however it is sharded: a DTensor counts its global size, a ZeRO-3
    parameter its `ds_numel` (DeepSpeed empties the tensor itself to a 0-element placeholder,
    deepspeed/runtime/zero/partition_parameters.py `_convert_to_deepspeed_param`)."""
    return sum(getattr(p, "ds_numel", None) or p.numel() for p in module.parameters())


def parameters_held(module) -> int:
    """Parameter elements this process stores: its shards of FSDP2's DTensors, its ZeRO-3 partitions (`ds_tensor`),
    every element of a plain tensor."""
    from torch.distributed.tensor import DTensor

    def held(p) -> int:
        if isinstance(p, DTensor):
            return p.to_local().numel()
        partition = getattr(p, "ds_tensor", None)
        return partition.numel() if partition is not None else p.numel()

    return sum(held(p) for p in module.parameters())


def set_parameter_dtypes(model, mixed: str, distributed) -> None:
    """Store parameters for the mixed precision `mixed` ("no", "bf16", "fp16") under `distributed` (accelerate's
    DistributedType): frozen ones in its dtype where nothing shards them (they need no float32 master); with fp16,
    the ones that train in float32, because accelerate's GradScaler (torch.amp) unscales float32 gradients only and
    raises on float16 ones (`--dtype float16 --mixed-precision fp16`). Under FSDP a shard unit holds one dtype: every
    parameter in float32 (its mixed-precision policy computes in float16). DeepSpeed keeps its own float32 masters."""
    import torch
    from accelerate.utils import DistributedType

    if mixed in ("bf16", "fp16") and distributed not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        store_frozen_in(model, torch.bfloat16 if mixed == "bf16" else torch.float16)
    if mixed != "fp16" or distributed == DistributedType.DEEPSPEED:
        return
    everything = distributed == DistributedType.FSDP
    for parameter in model.parameters():
        if (everything or parameter.requires_grad) and parameter.dtype == torch.float16:
            parameter.data = parameter.data.float()


def build_dataset(config: TrainConfig, model, processor, prompts):
    """(dataset, module to train, collate function) for the stage."""
    records = load_records(config.data, config.stage)
    image_folder = Path(config.image_folder) if config.image_folder else Path(config.data).parent
    check_image_folder(records, image_folder)
    if config.stage == "pretrain-vision":
        dataset = RegionDataset(records, image_folder, processor.image_processor)
        module = build_region_pretrainer(
            model.model.vision_tower, model.config.vision_feature_layer, dataset.classes, dataset.grid
        )
        return dataset, module, collate_regions
    dataset = conversation_dataset(config, model, records, image_folder, processor, prompts)
    pad = processor.tokenizer.pad_token_id
    return dataset, model, functools.partial(collate_conversations, pad_token_id=pad if pad is not None else 0)


def make_loader(config: TrainConfig, dataset, collate, accelerator):
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    order = dict(shuffle=True)
    if config.group_by_modality_length:  # LLaVA groups over processes x accumulation (llava_trainer.py)
        world = accelerator.num_processes * config.grad_accum
        order = dict(sampler=ModalityLengthGroupedSampler(dataset.records.lengths, config.batch_size, world, generator))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        collate_fn=collate,
        generator=generator,
        num_workers=config.num_workers,
        drop_last=len(dataset) >= config.batch_size,
        **order,
    )
    return loader, generator


def make_optimizer(config: TrainConfig, module):
    """AdamW over the trainable parameters only (frozen ones get no optimizer state)."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"stage {config.stage}: nothing to train")
    groups = [{"params": params}]
    if config.grouping_lr is not None:  # VisToG's new parts at their own rate
        new = {id(p) for name, p in module.named_parameters() if p.requires_grad and _is_vistog_part(name)}
        groups = [
            {"params": [p for p in params if id(p) in new], "lr": config.grouping_lr},
            {"params": [p for p in params if id(p) not in new]},
        ]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _is_vistog_part(name: str) -> bool:
    return "grouping" in name.split(".") or "semantic_tokens" in name  # per-view VisToG's: top-level `grouping.*`


def total_steps(config: TrainConfig, batches: int, processes: int) -> int:
    """Optimizer steps: max_steps, else epochs over each process's share of the `batches` (accelerate gives every
    process ceil(batches / processes) of them)."""
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.epochs * max(1, math.ceil(batches / processes) // config.grad_accum)))


class Progress:
    """Loss lines (stdout, training_log.jsonl, accelerate trackers) and a tqdm bar with loss, lr, samples/s and ETA."""

    def __init__(self, config: TrainConfig, accelerator, state: TrainerState, total: int):
        from tqdm.auto import tqdm

        self.config, self.accelerator, self.state = config, accelerator, state
        self.samples_per_step = config.batch_size * config.grad_accum * accelerator.num_processes
        self.start, self.start_step = time.perf_counter(), state.step
        show = config.progress and accelerator.is_local_main_process
        self.bar = tqdm(total=total, initial=state.step, desc=config.stage, disable=not show, dynamic_ncols=True)

    def log(self, record: dict) -> None:
        self.state.log_lines.append(record)
        if self.accelerator.is_main_process and not self.config.quiet:
            self.bar.write(json.dumps(record)) if not self.bar.disable else print(json.dumps(record), flush=True)

    def samples_per_s(self) -> float:
        elapsed = time.perf_counter() - self.start
        return (self.state.step - self.start_step) * self.samples_per_step / elapsed if elapsed > 0 else 0.0

    def step(self, total: int, lr: float) -> None:
        state, every = self.state, self.config.log_every
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{state.losses[-1]:.4f}", lr=f"{lr:.2e}", samples_s=f"{self.samples_per_s():.1f}")
        if state.step % every == 0 or state.step == total:
            recent = state.losses[-every:]
            record = {
                "stage": self.config.stage,
                "step": state.step,
                "of": total,
                "loss": round(sum(recent) / len(recent), 4),
                "lr": lr,
                "elapsed_s": round(time.perf_counter() - self.start, 1),
            }
            self.log(record)
            self.accelerator.log(
                {"loss": record["loss"], "lr": lr, "samples_per_s": self.samples_per_s()}, step=state.step
            )


def run_steps(config: TrainConfig, accelerator, parts, state: TrainerState, progress: Progress, total: int) -> None:
    """The optimisation loop from `state` on: micro-batches, accumulation, clipping, periodic resumable states."""
    import torch

    module, optimizer, scheduler, loader, generator = parts
    params = [p for p in module.parameters() if p.requires_grad]  # after prepare: FSDP2 swaps them for DTensors
    while state.step < total:
        if state.micro_batches_in_epoch:  # resumed inside an epoch: same order, already-seen batches skipped
            generator.set_state(state.epoch_generator_state)
            batches = accelerator.skip_first_batches(loader, state.micro_batches_in_epoch)
        else:
            state.epoch_generator_state = generator.get_state()
            batches = loader
        for batch in batches:
            state.micro_batches_in_epoch += 1
            skipped = batch.pop("skipped")
            with accelerator.accumulate(module):
                loss = module(**batch)
                loss = loss if isinstance(loss, torch.Tensor) else loss.loss
                losses = accelerator.gather(loss.detach())  # [processes]: all of them stop together
                if not torch.isfinite(losses).all():
                    values = ", ".join(str(v) for v in losses.reshape(-1).tolist())
                    raise LossNotFinite(
                        f"step {state.step + 1}: the loss is not finite ({values}, one per process); stopped before "
                        "applying it, no model written (a NaN / inf weight in --model? a learning rate too high?)"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.skipped += int(accelerator.gather(skipped.reshape(1)).sum())
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.losses.append(losses.mean().item())
            progress.step(total, scheduler.get_last_lr()[0])
            if config.save_steps and state.step % config.save_steps == 0 and state.step < total:
                checkpoints.save(config, accelerator, module, optimizer, scheduler, state)
            if state.step >= total:
                break
        else:
            state.micro_batches_in_epoch = 0


def save_checkpoint(config: TrainConfig, accelerator, module, model, processor, template, state: TrainerState) -> None:
    """The trained model as a Hugging Face folder (full weights gathered from FSDP / ZeRO-3 shards)."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(module) if is_sharded(accelerator) else None
    if not accelerator.is_main_process:
        return
    from safetensors import SafetensorError

    output_dir = Path(config.output_dir)
    model.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        # transformers finds the mapping back to a checkpoint's original weight names by class name, and fully_shard
        # renames the classes (FSDPLlavaForConditionalGeneration): FSDP2's gathered weights keep the modules' names
        model.save_pretrained(output_dir, state_dict=state_dict, save_original_format=not accelerator.is_fsdp2)
        processor.chat_template = template.text  # saved as chat_template.jinja: evaluation renders what training did
        processor.save_pretrained(output_dir)
    except (OSError, SafetensorError) as exc:  # a full disk: one line naming the folder
        raise checkpoints.write_failure(exc, output_dir) from None
    summary = {
        "stage": config.stage,
        "steps": state.step,
        "first_loss": state.losses[0],
        "last_loss": state.losses[-1],
        "skipped_samples": state.skipped,
        "processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.value,
        "mixed_precision": accelerator.mixed_precision,
        "llm_compute_dtype": state.llm_compute_dtype,
    }
    lines = [*state.log_lines, summary]
    (output_dir / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def start_trackers(config: TrainConfig, accelerator) -> None:
    """accelerate's trackers, before anything loads: one that cannot start (wandb with a bad key) is one line, with
    any secret from the environment blanked out of it."""
    if not config.report_to:
        return
    try:
        accelerator.init_trackers("vistog-bench", config={k: str(v) for k, v in asdict(config).items()})
    except Exception as exc:  # each tracker library raises its own types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        for name, value in os.environ.items():
            if len(value) >= 4 and re.search(r"KEY|TOKEN|SECRET|PASSWORD", name, re.IGNORECASE):
                message = message.replace(value, "***")
        raise UsageError(f"--report-to {' '.join(config.report_to)}: {type(exc).__name__}: {message}") from None


def starting_model(config: TrainConfig):
    """(model with the stage's parameters trainable, processor): the `model` folder's, or LLaVA composed from the
    `llm` and `vision_tower` folders (compose.py)."""
    from ..model.loading import load_processor

    if config.llm is None:
        return load_for_stage(config), load_processor(config.model)  # remote code refused
    from .compose import compose_llava

    model, processor = compose_llava(config.llm, config.vision_tower, dtype=config.dtype, seed=config.seed)
    return set_trainable(model, config), processor


def train(config: TrainConfig) -> TrainResult:
    """Train one stage; returns where the checkpoint is and the per-step losses."""
    import torch
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from ..model.prompting import PromptBuilder, find_template, image_token_of

    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    accelerator = make_accelerator(config)
    checkpoints.refuse_unsupported(config, accelerator)
    start_trackers(config, accelerator)
    model, processor = starting_model(config)
    template = find_template(processor, config.model or config.llm, config.chat_template)
    prompts = PromptBuilder(template, processor.tokenizer, image_token_of(processor))
    state = TrainerState()
    if is_sharded(accelerator) and config.stage == "pretrain-vision":
        raise UsageError("pretrain-vision trains the tiny demo encoder: run it without FSDP / DeepSpeed")
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    set_parameter_dtypes(model, accelerator.mixed_precision, accelerator.distributed_type)
    dataset, module, collate = build_dataset(config, model, processor, prompts)
    loader, generator = make_loader(config, dataset, collate, accelerator)
    optimizer = make_optimizer(config, module)
    total = total_steps(config, len(loader), accelerator.num_processes)
    # accelerate steps a prepared scheduler once per process per optimizer step: count the schedule in those steps
    ticks = accelerator.num_processes
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total) * ticks, total * ticks
    )
    fsdp_units_on_llm_layers(accelerator, module)
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
    watch_llm_compute_dtype(module, state)
    progress = Progress(config, accelerator, state, total)
    progress.log(
        {
            "stage": config.stage,
            "chat_template": template.source,
            "style": template.style,
            "parameters": parameters_total(module),
            "parameters_held": parameters_held(module),
        }
    )
    if config.resume_from_checkpoint:
        checkpoints.resume(config, accelerator, module, optimizer, scheduler, state)
        progress.bar.reset(total)
        progress.bar.update(state.step)
    module.train()
    run_steps(config, accelerator, (module, optimizer, scheduler, loader, generator), state, progress, total)
    progress.bar.close()
    save_checkpoint(config, accelerator, module, model, processor, template, state)
    accelerator.end_training()
    return TrainResult(Path(config.output_dir), state.step, list(state.losses), state.skipped)
