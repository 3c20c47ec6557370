"""`TrainConfig`: everything one training stage needs, checked once (bad values are a UsageError naming the flag)."""

from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import DTYPE_NAMES
from ..errors import UsageError

STAGES = ("pretrain-vision", "llava", "vistog-stage1", "vistog-stage2")
# "conversation": the checkpoint's chat template (LLaVA-1.5 `--version v1`); "plain": LLaVA's alignment format
# (`--version plain`: `<image>{caption}\n`, loss on the caption; llava/train/train.py `preprocess_plain`)
DATA_FORMATS = ("conversation", "plain")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """One stage: a checkpoint folder in, a checkpoint folder out (`vistog_bench.train.train(config)`)."""

    stage: str
    data: str  # LLaVA JSON (region JSON for pretrain-vision)
    output_dir: str
    model: str | None = None  # checkpoint folder (HF layout); pretrain-vision / llava may start from config + processor
    # llava stage from its parts (compose.py): an LLM folder (lmsys/vicuna-7b-v1.5) and a CLIP folder
    # (openai/clip-vit-large-patch14-336), a fresh projector between them; instead of `model`
    llm: str | None = None
    vision_tower: str | None = None
    image_folder: str | None = None  # image paths are relative to it (default: the data file's folder)
    data_format: str = "conversation"
    num_semantic_tokens: int | None = None  # N, the VisToG budget, when `model` is a LLaVA checkpoint
    train_vision: bool = False  # llava stage: the vision tower trains too
    train_llm: bool = True  # llava stage: False = LLaVA's alignment stage (projector only, `--tune_mm_mlp_adapter`)
    epochs: float = 1.0  # ignored when max_steps is set
    max_steps: int | None = None
    batch_size: int = 32  # samples per process per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    grouping_lr: float | None = None  # vistog stages: semantic tokens + grouping layer at their own rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_length: int = 2048  # tokens per sample, image tokens included
    dtype: str = "float32"  # weights dtype at load time
    # None: whatever `accelerate launch` / its config file says; frozen parameters are stored in this precision
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    group_by_modality_length: bool = False  # LLaVA-1.5's batching (finetune.sh); off: a plain shuffle
    seed: int = 0
    chat_template: str | None = None  # template file to train with instead of the checkpoint's own
    threads: int | None = None  # torch CPU threads
    num_workers: int = 0  # data-loader worker processes
    log_every: int = 20  # steps between loss lines
    save_steps: int | None = None  # a resumable state every K optimizer steps
    save_total_limit: int | None = None  # resumable states kept (oldest removed)
    resume_from_checkpoint: str | None = None  # a state folder, or "latest" under output_dir/checkpoints
    report_to: tuple[str, ...] = ()  # accelerate trackers (tensorboard, wandb, ...)
    progress: bool = True  # a progress bar on stderr (main process)
    quiet: bool = False  # no loss lines on stdout

    def __post_init__(self) -> None:
        parts = (self.llm, self.vision_tower)
        one_start = parts == (None, None) if self.model is not None else None not in parts
        checks = [
            (self.stage in STAGES, f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}"),
            (one_start, "give --model, or --llm and --vision-tower (LLaVA composed from its parts), not both"),
            (self.llm is None or self.stage == "llava", "--llm / --vision-tower compose LLaVA for the llava stage"),
            (self.data_format in DATA_FORMATS, f"--data-format must be one of {', '.join(DATA_FORMATS)}"),
            (self.dtype in DTYPE_NAMES, f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}"),
            (
                self.mixed_precision in (None, *MIXED_PRECISION),
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}",
            ),
            (
                self.num_semantic_tokens is None or self.stage.startswith("vistog"),
                "--num-semantic-tokens applies to the vistog stages only",
            ),
            (self.num_semantic_tokens is None or self.num_semantic_tokens >= 1, "--num-semantic-tokens must be >= 1"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.epochs > 0, f"--epochs must be > 0, got {self.epochs}"),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
        ]
        for name in ("batch_size", "grad_accum", "log_every", "max_length"):
            checks.append(
                (getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
            )
        for name in ("max_steps", "save_steps", "save_total_limit", "threads"):
            value = getattr(self, name)
            checks.append((value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}"))
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        check_trackers(self.report_to)


def check_trackers(names: tuple[str, ...]) -> None:
    """--report-to names accelerate's trackers whose package is installed (accelerate drops any other silently)."""
    if not names:
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType]
    available = [t.value for t in get_available_trackers()]
    for name in names:
        if name not in known:
            raise UsageError(f"--report-to {name}: not one of accelerate's trackers ({', '.join(known)})")
        if name != "all" and name not in available:
            raise UsageError(f"--report-to {name}: its package is not installed (installed: {available or 'none'})")
    if "all" in names and not available:
        raise UsageError("--report-to all: no tracker package is installed")
