"""`vistog-bench train`: train LLaVA-1.5 and VisToG (stage 1 and 2) on LLaVA-format conversation data.

One trainer for the embedded tiny models and for real checkpoints (transformers + accelerate; launch it with
`accelerate launch -m vistog_bench.demo.train ...` on GPUs). Stages, each reading a checkpoint folder and writing one:

    pretrain-vision   the LLaVA checkpoint's vision tower learns per-region attributes (supervised; a small linear
                      head per attribute reads every patch at LLaVA's feature layer; the head is discarded)
    llava             projector + LLM (+ the vision tower with --train-vision); writes a stock LLaVA checkpoint
    vistog-stage1     vision and LLM frozen; semantic tokens, grouping layer and projector train
                      (a LLaVA checkpoint is wrapped with `from_llava(num_semantic_tokens=N)`)
    vistog-stage2     as stage 1, plus the LLM; the vision encoder stays frozen

Data: a JSON list in LLaVA's format, `{"id", "image": file | [files], "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}` (one `<image>` per image; a list of images is a
video's frames or a multi-image sample; no `image` key: text only). `pretrain-vision` reads
`{"id", "image", "region_labels": {attribute: [label per region, G*G row-major]}}`.
Conversations are rendered with the checkpoint's chat template (`--chat-template FILE` overrides it; a checkpoint
without one gets LLaVA-1.5's vicuna_v1 conversation) by the prompt builder evaluation uses
(`model.prompting.PromptBuilder`), and the trained checkpoint carries that template, so `vistog-bench run` evaluates
it with the prompt it was trained with. The embedded models' template gives
`USER: <image>\\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>`; the loss is on the answers and `</s>`.

`vistog-bench train --demo` (= `python -m vistog_bench.demo.build`) rebuilds the committed tiny models.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from pathlib import Path

from ..errors import UsageError

STAGES = ("pretrain-vision", "llava", "vistog-stage1", "vistog-stage2")
IGNORE_INDEX = -100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true", help="rebuild the embedded tiny models (all stages, seeded)")
    parser.add_argument("--stage", choices=STAGES, help="what to train (see the module docstring)")
    parser.add_argument("--model", help="checkpoint folder to start from (LLaVA or VisToG, Hugging Face layout); "
                        "for `pretrain-vision` / `llava` it may hold only config.json + processor files (fresh init)")
    parser.add_argument("--data", help="training data: LLaVA conversation JSON (region JSON for pretrain-vision)")
    parser.add_argument("--image-folder", help="folder image paths are relative to (default: the data file's folder)")
    parser.add_argument("--output-dir", help="where the trained checkpoint is written")
    parser.add_argument("--num-semantic-tokens", type=int, help="N, the VisToG budget (when --model is LLaVA)")
    parser.add_argument("--train-vision", action="store_true", help="llava stage: train the vision tower too")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the data (ignored with --max-steps)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per device per step")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--max-length", type=int, default=2048, help="tokens per sample, image tokens included")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights dtype when loading (use accelerate's --mixed_precision for AMP)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat-template", help="Jinja template file (or chat_template.json) to train with instead of "
                        "the checkpoint's own (default: the checkpoint's, else LLaVA-1.5's vicuna_v1); it is saved "
                        "into the trained checkpoint")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--log-every", type=int, default=20, help="steps between loss lines")
    parser.add_argument("--quiet", action="store_true", help="no loss lines on stdout")  # fmt: skip


# -- data ----------------------------------------------------------------------------------------------------------------
def load_records(path: str | Path, stage: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"training data not found: {path}")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(records, list) or not records:
        raise UsageError(f"{path} must hold a non-empty JSON list of samples")
    key = "region_labels" if stage == "pretrain-vision" else "conversations"
    for record in records[:1000]:
        if not isinstance(record, dict) or key not in record:
            raise UsageError(f"{path}: every sample needs a {key!r} field for stage {stage} (sample: {str(record)[:80]})")
    return records


def image_files(record: dict) -> list[str]:
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def expand2square(image, background: tuple[int, int, int]):
    """LLaVA-1.5's padding of a non-square image to a square of the image processor's mean colour."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


class ImageLoader:
    def __init__(self, image_folder: Path, image_processor):
        self.image_folder = image_folder
        self.image_processor = image_processor
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.background = tuple(int(255 * m) for m in mean)

    def __call__(self, files: list[str]):
        from PIL import Image

        images = []
        for name in files:
            path = self.image_folder / name
            if not path.is_file():
                raise UsageError(f"image not found: {path}")
            images.append(expand2square(Image.open(path).convert("RGB"), self.background))
        return self.image_processor(images, return_tensors="pt")["pixel_values"]  # [K, 3, H, W]


class ConversationDataset:
    """LLaVA conversations -> input_ids / labels (answers only) / pixel_values [K, 3, H, W].

    Prompts come from `prompts` (a `model.prompting.PromptBuilder` over the checkpoint's chat template), the same
    builder evaluation uses: round 0's prompt is exactly what `vistog-bench run` feeds the trained checkpoint. Each
    answer is followed by the end-of-sequence token, which is trained (LLaVA's target)."""

    def __init__(self, records, image_folder, processor, prompts, tokens_per_image: int, max_length: int):
        self.records = records
        self.tokenizer = processor.tokenizer
        self.prompts = prompts
        self.image_token = prompts.image_token
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.load_images = ImageLoader(Path(image_folder), processor.image_processor)
        if self.tokenizer.eos_token_id is None:
            raise UsageError("the tokenizer has no eos token; LLaVA training ends each answer with it")

    def __len__(self) -> int:
        return len(self.records)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _answer_ids(self, prompt_ids: list[int], prompt: str, answer: str) -> list[int]:
        """The answer's tokens as they follow the prompt in one text (a SentencePiece tokenizer marks a word start
        differently at the start of a text), else tokenised alone."""
        joint = self._ids(prompt + " " + answer)
        if joint[: len(prompt_ids)] == prompt_ids:
            return joint[len(prompt_ids) :]
        return self._ids(" " + answer)

    def encode(self, record: dict) -> tuple[list[int], list[int]]:
        from ..model.processing import expand_image_tokens
        from ..model.prompting import Turn

        tokenizer = self.tokenizer
        turns = record["conversations"]
        conversation = []
        for i in range(0, len(turns) - 1, 2):
            human, gpt = turns[i], turns[i + 1]
            if human.get("from") != "human" or gpt.get("from") != "gpt":
                raise UsageError(f"sample {record.get('id')}: turns must alternate human / gpt")
            conversation += [Turn("user", human["value"]), Turn("assistant", gpt["value"])]
        input_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(input_ids)
        for prompt, answer in self.prompts.training_rounds(conversation):
            prompt = expand_image_tokens(prompt, self.tokens_per_image, self.image_token)
            prompt_ids = self._ids(prompt)
            answer_ids = self._answer_ids(prompt_ids, prompt, answer) + [tokenizer.eos_token_id]
            input_ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return input_ids[: self.max_length], labels[: self.max_length]

    def __getitem__(self, index: int) -> dict:
        import torch

        record = self.records[index]
        files = image_files(record)
        input_ids, labels = self.encode(record)
        image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        found = sum(t == image_token_id for t in input_ids)
        if found != len(files) * self.tokens_per_image:
            raise UsageError(
                f"sample {record.get('id')}: {len(files)} images need {len(files) * self.tokens_per_image} image "
                f"tokens, the (truncated) text has {found}; check its <image> placeholders or raise --max-length"
            )
        item = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if files:
            item["pixel_values"] = self.load_images(files)
        return item


def collate_conversations(items: list[dict], pad_token_id: int) -> dict:
    """Right-pad to the longest sample; images of the batch concatenated in sample order, as LLaVA expects."""
    import torch

    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, :n] = item["input_ids"]
        labels[row, :n] = item["labels"]
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    pixels = [item["pixel_values"] for item in items if "pixel_values" in item]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)  # [sum K, 3, H, W]
    return batch


class RegionDataset:
    """Images with per-region labels -> pixel_values [3, H, W] and a [num_attributes, G*G] label tensor."""

    def __init__(self, records, image_folder, image_processor):
        self.records = records
        self.load_images = ImageLoader(Path(image_folder), image_processor)
        first = records[0]["region_labels"]
        self.attributes = sorted(first)
        self.num_regions = len(first[self.attributes[0]])
        grid = math.isqrt(self.num_regions)
        if grid * grid != self.num_regions:
            raise UsageError(f"region_labels must cover a square G x G grid, got {self.num_regions} regions")
        self.grid = grid
        self.classes = {
            a: sorted({label for r in records for label in r["region_labels"][a]}) for a in self.attributes
        }

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        import torch

        record = self.records[index]
        labels = record["region_labels"]
        target = torch.tensor(
            [[self.classes[a].index(label) for label in labels[a]] for a in self.attributes], dtype=torch.long
        )
        if target.shape[1] != self.num_regions:
            raise UsageError(f"sample {record.get('id')}: expected {self.num_regions} region labels per attribute")
        return {"pixel_values": self.load_images(image_files(record))[0], "region_targets": target}


def collate_regions(items: list[dict]) -> dict:
    import torch

    return {
        "pixel_values": torch.stack([i["pixel_values"] for i in items]),
        "region_targets": torch.stack([i["region_targets"] for i in items]),
    }


# -- models --------------------------------------------------------------------------------------------------------------
def patch_regions(patch_grid: int, region_grid: int):
    """Region index (row-major on the G x G grid) of each patch, by the patch centre: [P]."""
    import torch

    centres = (torch.arange(patch_grid) + 0.5) / patch_grid  # [g] in (0, 1)
    cells = (centres * region_grid).long().clamp(max=region_grid - 1)  # [g]
    return (cells[:, None] * region_grid + cells[None, :]).reshape(-1)  # [P]


def build_region_pretrainer(vision_tower, feature_layer: int, classes: dict[str, list[str]], region_grid: int):
    """The vision tower + one linear head per attribute; every patch predicts the labels of its region."""
    import torch
    from torch import nn

    class RegionPretrainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = vision_tower
            width = vision_tower.config.hidden_size
            self.heads = nn.ModuleList([nn.Linear(width, len(c)) for c in classes.values()])
            patch_grid = vision_tower.config.image_size // vision_tower.config.patch_size
            self.register_buffer("regions", patch_regions(patch_grid, region_grid), persistent=False)

        def forward(self, pixel_values, region_targets):
            outputs = self.vision_tower(pixel_values, output_hidden_states=True)
            patches = outputs.hidden_states[feature_layer][:, 1:]  # [B, P, Dv], CLS dropped as LLaVA does
            targets = region_targets[:, :, self.regions]  # [B, A, P] <- [B, A, G*G]
            losses = [
                nn.functional.cross_entropy(head(patches).flatten(0, 1), targets[:, a].flatten())
                for a, head in enumerate(self.heads)
            ]
            return torch.stack(losses).mean()

    return RegionPretrainer()


def load_for_stage(args, processor):
    """The model a stage trains, with exactly the stage's parameters trainable."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from ..model import VisToGForConditionalGeneration
    from ..model.loading import load_config, parse_dtype

    path = Path(args.model)
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a checkpoint folder: config.json is missing")
    config = load_config(path)  # refuses a checkpoint that asks to run its own code
    has_weights = any(path.glob("*.safetensors"))
    dtype = parse_dtype(args.dtype)
    kwargs = dict(dtype=dtype, use_safetensors=True)
    stage = args.stage

    def load(cls):
        try:
            return cls.from_pretrained(path, **kwargs)
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None

    if stage in ("pretrain-vision", "llava"):
        if config.model_type != "llava":
            raise UsageError(f"stage {stage} trains a LLaVA checkpoint; {path} holds a {config.model_type!r} model")
        if has_weights:
            model = load(LlavaForConditionalGeneration)
        else:
            torch.manual_seed(args.seed)
            model = LlavaForConditionalGeneration(config).to(dtype)
        trainable = [model.model.vision_tower] if stage == "pretrain-vision" else [
            model.model.multi_modal_projector, model.model.language_model, model.lm_head
        ] + ([model.model.vision_tower] if args.train_vision else [])  # fmt: skip
    else:
        if not has_weights:
            raise UsageError(f"stage {stage} starts from trained weights; {path} has no *.safetensors")
        if config.model_type == "llava":
            if args.num_semantic_tokens is None:
                raise UsageError(f"{path} is a LLaVA checkpoint: give --num-semantic-tokens N for VisToG")
            torch.manual_seed(args.seed)
            model = VisToGForConditionalGeneration.from_llava(
                load(LlavaForConditionalGeneration), num_semantic_tokens=args.num_semantic_tokens
            )
        elif config.model_type == "vistog":
            model = load(VisToGForConditionalGeneration)
            have = model.config.num_semantic_tokens
            if have is None:
                raise UsageError(f"{path} is a VisToG checkpoint with VisToG off; start from a LLaVA checkpoint")
            if args.num_semantic_tokens not in (None, have):
                raise UsageError(f"{path} has {have} semantic tokens, --num-semantic-tokens asks {args.num_semantic_tokens}")
        else:
            raise UsageError(f"{path} holds a {config.model_type!r} model; expected 'llava' or 'vistog'")
        inner = model.model
        trainable = [inner.grouping, inner.multi_modal_projector]
        if stage == "vistog-stage2":
            trainable += [inner.language_model, model.lm_head]
    model.requires_grad_(False)
    for module in trainable:
        module.requires_grad_(True)
    if stage.startswith("vistog"):
        model.model.vision_tower.semantic_tokens.requires_grad_(True)
    return model


def tokens_per_image(model) -> int:
    if hasattr(model, "num_visual_tokens"):
        return model.num_visual_tokens
    config = model.config
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


# -- loop ----------------------------------------------------------------------------------------------------------------
def train_loop(args, module, dataset, collate, accelerator, log) -> list[float]:
    """AdamW + cosine schedule with warmup over `module`'s trainable parameters; returns the per-step losses."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate, generator=generator,
        num_workers=args.num_workers, drop_last=len(dataset) >= args.batch_size,
    )  # fmt: skip
    steps_per_epoch = max(1, len(loader) // args.grad_accum)
    total = args.max_steps if args.max_steps else max(1, math.ceil(args.epochs * steps_per_epoch))
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"stage {args.stage}: nothing to train")
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * total), total)
    module, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
    module.train()
    losses, step, start = [], 0, time.perf_counter()
    while step < total:
        for batch in loader:
            with accelerator.accumulate(module):
                loss = module(**batch)
                loss = loss if isinstance(loss, torch.Tensor) else loss.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            losses.append(accelerator.gather(loss.detach()).mean().item())
            if step % args.log_every == 0 or step == total:
                recent = losses[-args.log_every :]
                log(
                    {"stage": args.stage, "step": step, "of": total, "loss": round(sum(recent) / len(recent), 4),
                     "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - start, 1)}
                )  # fmt: skip
            if step >= total:
                break
    return losses


def check_args(args) -> None:
    missing = [name for name in ("stage", "model", "data", "output_dir") if getattr(args, name) is None]
    if missing:
        raise UsageError("missing " + ", ".join("--" + m.replace("_", "-") for m in missing) + " (or use --demo)")
    if args.num_semantic_tokens is not None and not args.stage.startswith("vistog"):
        raise UsageError("--num-semantic-tokens applies to the vistog stages only")
    for name in ("batch_size", "grad_accum", "log_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")


def main(args: argparse.Namespace) -> int:
    if args.demo:
        from .build import build

        build()
        return 0
    check_args(args)
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from ..model.loading import load_processor
    from ..model.prompting import PromptBuilder, find_template, image_token_of

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum)
    output_dir = Path(args.output_dir)
    log_lines: list[dict] = []

    def log(record: dict) -> None:
        log_lines.append(record)
        if accelerator.is_main_process and not args.quiet:
            print(json.dumps(record), flush=True)

    try:
        processor = load_processor(args.model)  # remote code refused
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a processor from {args.model}: {str(exc).splitlines()[0]}") from None
    template = find_template(processor, args.model, args.chat_template)
    prompts = PromptBuilder(template, processor.tokenizer, image_token_of(processor))
    log({"stage": args.stage, "chat_template": template.source, "style": template.style})
    records = load_records(args.data, args.stage)
    image_folder = Path(args.image_folder) if args.image_folder else Path(args.data).parent
    model = load_for_stage(args, processor)

    if args.stage == "pretrain-vision":
        dataset = RegionDataset(records, image_folder, processor.image_processor)
        module = build_region_pretrainer(
            model.model.vision_tower, model.config.vision_feature_layer, dataset.classes, dataset.grid
        )
        collate = collate_regions
    else:
        dataset = ConversationDataset(records, image_folder, processor, prompts, tokens_per_image(model), args.max_length)
        pad = processor.tokenizer.pad_token_id
        module = model
        collate = functools.partial(collate_conversations, pad_token_id=pad if pad is not None else 0)

    losses = train_loop(args, module, dataset, collate, accelerator, log)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.eval()
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.chat_template = template.text  # saved as chat_template.jinja: evaluation renders what training did
        processor.save_pretrained(output_dir)
        summary = {"stage": args.stage, "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}
        (output_dir / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*log_lines, summary]))
    return 0


def run_cli(argv: list[str] | None = None) -> int:
    """`python -m vistog_bench.demo.train ...` (e.g. under `accelerate launch`): the same as `vistog-bench train`."""
    import sys

    parser = argparse.ArgumentParser(prog="vistog_bench.demo.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except UsageError as exc:
        print(f"vistog-bench train: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(run_cli())
