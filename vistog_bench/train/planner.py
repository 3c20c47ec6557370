"""Per-GPU training memory of a recipe, without weights: `vistog-bench train --recipe NAME --plan`.

Model states (ZeRO paper: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC 2020, arXiv 1910.02054, section 3.1 and figure 1), with Psi parameters of which Psi_t train, N_d GPUs:
- mixed-precision Adam keeps 16-bit parameters (2 Psi), 16-bit gradients (2 Psi_t) and K = 12 bytes of optimizer
  state per trained parameter (fp32 master copy, momentum, variance); in fp32 training parameters and gradients take
  4 bytes each and the optimizer 8 (momentum, variance);
- ZeRO-1 partitions the optimizer states over N_d, ZeRO-2 the gradients too, ZeRO-3 the parameters too (FSDP's full
  sharding partitions as ZeRO-3). Frozen parameters have no gradient and no optimizer state.
Activations (Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", MLSys 2023, arXiv
2205.05198, section 4.1): a transformer layer stores s*b*h*(34 + 5*a*s/h) bytes in 16-bit; fused (SDPA / flash)
attention stores no s x s scores, which leaves 34*s*b*h; with full activation checkpointing a layer keeps its
2*s*b*h-byte input, and one layer is recomputed at a time. Ours: the logits of b*s tokens over the vocabulary, kept
in 16 bit, upcast to fp32 for the loss and its gradient: 10*s*b*V bytes; the vision tower's activations count only
when it holds trained parameters (VisToG's semantic tokens, train_vision). Not counted: the CUDA context and
allocator fragmentation (`OVERHEAD_BYTES` is our allowance for them), communication buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..model.geometry import num_patches

GB = 1e9
OVERHEAD_BYTES = 3 * GB  # CUDA context + allocator slack: our allowance, not a formula
ZERO_STAGE_OF_CONFIG = {"ddp.yaml": 0, "zero2.yaml": 2, "zero3.yaml": 3, "fsdp2.yaml": 3}


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trained: int
    vision_trained: bool


@dataclass(frozen=True)
class MemoryPlan:
    name: str
    gpus: int
    gpu_memory_bytes: float
    zero_stage: int
    parameters_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    activations_without_checkpointing_bytes: float

    @property
    def total_bytes(self) -> float:
        return (
            self.parameters_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + OVERHEAD_BYTES
        )

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.gpu_memory_bytes

    def render(self) -> str:
        rows = [
            ("parameters", self.parameters_bytes),
            ("gradients", self.gradients_bytes),
            ("optimizer states", self.optimizer_bytes),
            ("activations", self.activations_bytes),
            ("(activations without checkpointing)", self.activations_without_checkpointing_bytes),
            ("overhead allowance", OVERHEAD_BYTES),
            ("total per GPU", self.total_bytes),
        ]
        lines = [f"{self.name}: {self.gpus} GPUs x {self.gpu_memory_bytes / GB:.0f} GB, ZeRO stage {self.zero_stage}"]
        lines += [f"  {label:<38} {value / GB:8.2f} GB" for label, value in rows]
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"  {verdict}: {self.total_bytes / GB:.1f} of {self.gpu_memory_bytes / GB:.0f} GB")
        return "\n".join(lines)


def model_states_bytes(counts: ParameterCounts, gpus: int, zero_stage: int, mixed: bool) -> tuple[float, float, float]:
    """(parameters, gradients, optimizer states) per GPU, ZeRO paper section 3.1."""
    weight, grad, optim = (2, 2, 12) if mixed else (4, 4, 8)
    parameters = weight * counts.total / (gpus if zero_stage >= 3 else 1)
    gradients = grad * counts.trained / (gpus if zero_stage >= 2 else 1)
    optimizer = optim * counts.trained / (gpus if zero_stage >= 1 else 1)
    return parameters, gradients, optimizer


def layer_activation_bytes(seq: int, batch: int, hidden: int) -> float:
    return 34 * seq * batch * hidden  # Korthikanti et al. 2022, fused attention (no 5as/h score term)


def activation_bytes(config, seq: int, batch: int, vision_trained: bool, checkpointing: bool) -> float:
    text, vision = config.text_config, config.vision_config
    towers = [(text.num_hidden_layers, seq, text.hidden_size)]
    if vision_trained:
        tokens = num_patches(vision) + 1 + (config.num_semantic_tokens or 0)
        towers.append((vision.num_hidden_layers, tokens, vision.hidden_size))
    total = 10 * seq * batch * text.vocab_size  # logits: ours
    for layers, tokens, hidden in towers:
        full = layer_activation_bytes(tokens, batch, hidden)
        total += layers * 2 * tokens * batch * hidden + full if checkpointing else layers * full
    return total


def count_parameters(config, stage: str, train_llm: bool = True, train_vision: bool = False) -> ParameterCounts:
    """Exact parameter counts of the stage's model, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from ..model import VisToGForConditionalGeneration
    from .stages import trainable_parts

    with torch.device("meta"):
        if stage.startswith("vistog"):
            model = VisToGForConditionalGeneration(config)
        else:
            model = LlavaForConditionalGeneration(config)
    parts = trainable_parts(model, stage, train_llm, train_vision)
    trained = {
        id(p): p.numel() for part in parts for p in (part.parameters() if hasattr(part, "parameters") else [part])
    }
    vision_ids = {id(p) for p in model.model.vision_tower.parameters()}
    return ParameterCounts(
        sum(p.numel() for p in model.parameters()), sum(trained.values()), bool(vision_ids & set(trained))
    )


def plan_recipe(name: str, gpus: int | None = None, gpu_memory_gb: float = 80.0) -> MemoryPlan:
    from ..model.presets import PRESETS, preset_config
    from .recipes import get_recipe

    recipe = get_recipe(name)
    gpus = recipe.gpus if gpus is None else gpus
    if gpus < 1 or gpu_memory_gb <= 0:
        raise UsageError(f"--gpus must be >= 1 and --gpu-memory-gb > 0, got {gpus} and {gpu_memory_gb}")
    if recipe.shape not in PRESETS:  # the activation formulas here are LLaVA-1.5's (one 576-token view per image)
        raise UsageError(f"--plan covers LLaVA-1.5 shapes ({', '.join(PRESETS)}); {name} trains {recipe.shape}")
    values = recipe.values
    config = preset_config(recipe.shape, values.get("num_semantic_tokens"))
    counts = count_parameters(config, recipe.stage, values.get("train_llm", True), values.get("train_vision", False))
    zero = ZERO_STAGE_OF_CONFIG[recipe.accelerate_config]
    mixed = values.get("mixed_precision") in ("bf16", "fp16")
    states = model_states_bytes(counts, gpus, zero, mixed)
    seq, batch = values["max_length"], values["batch_size"]
    with_ckpt = activation_bytes(config, seq, batch, counts.vision_trained, values.get("gradient_checkpointing", False))
    without = activation_bytes(config, seq, batch, counts.vision_trained, False)
    return MemoryPlan(name, gpus, gpu_memory_gb * GB, zero, *states, with_ckpt, without)
