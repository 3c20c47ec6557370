"""Training data in LLaVA-1.5's own files, read lazily: records, images, tokens, batches.

- `llava_v1_5_mix665k.json` (instruction tuning): `{"id", "image": "coco/train2017/....jpg", "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}`; multi-turn; no `image` key = text only;
  image paths relative to one root holding coco/, gqa/, ocr_vqa/, textvqa/, vg/. A list of images is a video's frames.
- `blip_laion_cc_sbu_558k.json` (alignment): the same keys, one human turn holding `<image>` and one caption; read
  with `data_format="plain"` as LLaVA's `--version plain` does.
- Region JSON (the demo's vision pre-training): `{"id", "image", "region_labels": {attribute: [G*G labels]}}`.

Records are kept as one buffer of JSON bytes (decoded per sample), so a 665k-sample list costs its file size and data
loader workers do not copy it page by page (detectron2's `DatasetFromList(serialize=True)` trick). A sample whose image
is missing or unreadable, or whose image tokens the length limit cuts, is replaced by the next good sample and counted
(`skipped` in each batch), so batches keep their size and every process takes the same number of steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import UsageError

IGNORE_INDEX = -100  # labels not trained (transformers' and LLaVA's convention)
PLAIN_SEPARATOR = "\n"  # LLaVA's conv_llava_plain.sep


class Records:
    """A JSON list of samples held as bytes: `records[i]` decodes sample i; `lengths` are LLaVA's modality lengths
    (words of all turns; negative for text-only samples, llava/train/train.py `modality_lengths`)."""

    def __init__(self, samples: list[dict]):
        encoded = [json.dumps(s).encode() for s in samples]
        self._offsets = np.cumsum([0] + [len(e) for e in encoded])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.lengths = [modality_length(s) for s in samples]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> dict:
        return json.loads(self._buffer[self._offsets[index] : self._offsets[index + 1]].tobytes())


def modality_length(sample: dict) -> int:
    words = sum(len(turn.get("value", "").split()) for turn in sample.get("conversations", ())) or 1
    return words if "image" in sample else -words


def load_records(path: str | Path, stage: str) -> Records:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"training data not found: {path}")
    try:
        samples = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(samples, list) or not samples:
        raise UsageError(f"{path} must hold a non-empty JSON list of samples")
    key = "region_labels" if stage == "pretrain-vision" else "conversations"
    for sample in samples[:1000]:
        if not isinstance(sample, dict) or key not in sample:
            raise UsageError(f"{path}: every sample needs a {key!r} field for stage {stage} (sample: {str(sample)[:80]})")
    return Records(samples)


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


class SkipSample(Exception):
    """This sample cannot be trained on (the reason is the message); the dataset moves to the next one."""


class ImageLoader:
    def __init__(self, image_folder: Path, image_processor):
        self.image_folder = image_folder
        self.image_processor = image_processor
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.background = tuple(int(255 * m) for m in mean)

    def __call__(self, files: list[str]):
        from PIL import Image, UnidentifiedImageError

        images = []
        for name in files:
            path = self.image_folder / name
            if not path.is_file():
                raise SkipSample("missing image")
            try:
                images.append(expand2square(Image.open(path).convert("RGB"), self.background))
            except (OSError, UnidentifiedImageError, ValueError):
                raise SkipSample("corrupt image") from None
        return self.image_processor(images, return_tensors="pt")["pixel_values"]  # [K, 3, H, W]


class SkippingDataset:
    """`__getitem__(i)` returns sample i, or the first good one after it, with `skipped` = how many were passed over."""

    max_skips = 100  # that many bad samples in a row is a wrong --image-folder, not bad luck

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        for skipped in range(self.max_skips):
            try:
                item = self.sample((index + skipped) % len(self))
            except SkipSample:
                continue
            return {**item, "skipped": skipped}
        raise UsageError(f"{self.max_skips} samples in a row from #{index} have missing or unreadable images; "
                         "check --image-folder")  # fmt: skip


class ConversationDataset(SkippingDataset):
    """LLaVA conversations -> input_ids / labels (answers only) / pixel_values [K, 3, H, W].

    Prompts come from `prompts` (a `model.prompting.PromptBuilder` over the checkpoint's chat template), the same
    builder evaluation uses: round 0's prompt is exactly what `vistog-bench run` feeds the trained checkpoint. Each
    answer is followed by the end-of-sequence token, which is trained (LLaVA's target). With `data_format="plain"`
    a sample is `<image>{caption}\\n` with the loss on the caption (LLaVA's alignment stage)."""

    def __init__(self, records, image_folder, processor, prompts, tokens_per_image: int, max_length: int,
                 data_format: str = "conversation"):  # fmt: skip
        self.records = records
        self.tokenizer = processor.tokenizer
        self.prompts = prompts
        self.image_token = prompts.image_token
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.data_format = data_format
        self.load_images = ImageLoader(Path(image_folder), processor.image_processor)
        if self.tokenizer.eos_token_id is None:
            raise UsageError("the tokenizer has no eos token; LLaVA training ends each answer with it")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _answer_ids(self, prompt_ids: list[int], prompt: str, answer: str) -> list[int]:
        """The answer's tokens as they follow the prompt in one text (a SentencePiece tokenizer marks a word start
        differently at the start of a text), else tokenised alone."""
        joint = self._ids(prompt + " " + answer)
        if joint[: len(prompt_ids)] == prompt_ids:
            return joint[len(prompt_ids) :]
        return self._ids(" " + answer)

    def rounds(self, record: dict) -> list[tuple[str, str, bool]]:
        """(prompt, answer, end with eos) per round, prompts' image placeholders not yet expanded."""
        from ..model.prompting import Turn

        turns = record["conversations"]
        if turns and turns[0].get("from") != "human":  # LLaVA drops a leading non-human turn
            turns = turns[1:]
        if self.data_format == "plain":
            if len(turns) != 2 or self.image_token not in turns[0].get("value", ""):
                raise UsageError(f"sample {record.get('id')}: the plain format is one human turn with "
                                 f"{self.image_token} and one caption")  # fmt: skip
            # LLaVA replaces the human turn by the image token alone; the caption ends with the separator, not eos
            return [(self.image_token, turns[1]["value"] + PLAIN_SEPARATOR, False)]
        conversation = []
        for human, gpt in zip(turns[0::2], turns[1::2]):
            if human.get("from") != "human" or gpt.get("from") != "gpt":
                raise UsageError(f"sample {record.get('id')}: turns must alternate human / gpt")
            conversation += [Turn("user", human["value"]), Turn("assistant", gpt["value"])]
        return [(prompt, answer, True) for prompt, answer in self.prompts.training_rounds(conversation)]

    def encode(self, record: dict) -> tuple[list[int], list[int]]:
        from ..model.processing import expand_image_tokens

        tokenizer = self.tokenizer
        input_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(input_ids)
        for prompt, answer, eos in self.rounds(record):
            prompt = expand_image_tokens(prompt, self.tokens_per_image, self.image_token)
            prompt_ids = self._ids(prompt)
            answer_ids = self._answer_ids(prompt_ids, prompt, answer) + ([tokenizer.eos_token_id] if eos else [])
            input_ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return input_ids[: self.max_length], labels[: self.max_length]

    def sample(self, index: int) -> dict:
        import torch

        record = self.records[index]
        files = image_files(record)
        input_ids, labels = self.encode(record)
        image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        found = sum(t == image_token_id for t in input_ids)
        if found != len(files) * self.tokens_per_image:
            if found < len(files) * self.tokens_per_image and len(input_ids) == self.max_length:
                raise SkipSample("image tokens cut by --max-length")
            raise UsageError(
                f"sample {record.get('id')}: {len(files)} images need {len(files) * self.tokens_per_image} image "
                f"tokens, the text has {found}; check its <image> placeholders"
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
    batch["skipped"] = torch.tensor(sum(item["skipped"] for item in items))
    return batch


class RegionDataset(SkippingDataset):
    """Images with per-region labels -> pixel_values [3, H, W] and a [num_attributes, G*G] label tensor."""

    def __init__(self, records, image_folder, image_processor):
        self.records = records
        self.load_images = ImageLoader(Path(image_folder), image_processor)
        samples = [records[i] for i in range(len(records))]
        first = samples[0]["region_labels"]
        self.attributes = sorted(first)
        self.num_regions = len(first[self.attributes[0]])
        grid = math.isqrt(self.num_regions)
        if grid * grid != self.num_regions:
            raise UsageError(f"region_labels must cover a square G x G grid, got {self.num_regions} regions")
        self.grid = grid
        self.classes = {
            a: sorted({label for s in samples for label in s["region_labels"][a]}) for a in self.attributes
        }

    def sample(self, index: int) -> dict:
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
        "skipped": torch.tensor(sum(item["skipped"] for item in items)),
    }


# -- LLaVA-1.5's group_by_modality_length batching (llava/train/llava_trainer.py) ------------------------------------
def split_to_even_chunks(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """Longest first, each index to the chunk with the fewest words so far (LLaVA's `split_to_even_chunks`)."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks, totals = [[] for _ in range(num_chunks)], [0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] = math.inf if len(chunks[shortest]) == per_chunk else totals[shortest] + lengths[index]
    return chunks


def length_grouped_indices(lengths: list[int], megabatch_size: int, num_chunks: int, generator) -> list[int]:
    import torch

    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatches = [sorted(indices[i : i + megabatch_size], key=lambda j: lengths[j], reverse=True)
                   for i in range(0, len(indices), megabatch_size)]  # fmt: skip
    return [i for m in megabatches for chunk in split_to_even_chunks(m, lengths, num_chunks) for i in chunk]


def modality_grouped_indices(lengths: list[int], batch_size: int, world_size: int, generator) -> list[int]:
    """Every megabatch (world_size x batch_size samples) all image or all text, lengths balanced across processes;
    the two leftover partial megabatches go together at the end. LLaVA shuffles within a modality unseeded
    (`generator=None`); here every shuffle draws from `generator`, so a run is reproducible and resumable."""
    import torch

    megabatch_size = world_size * batch_size
    grouped = []
    for sign in (1, -1):
        members = [i for i, n in enumerate(lengths) if n * sign > 0]
        order = length_grouped_indices([abs(lengths[i]) for i in members], megabatch_size, world_size, generator)
        shuffled = [members[i] for i in order]
        grouped.append([shuffled[i : i + megabatch_size] for i in range(0, len(shuffled), megabatch_size)])
    leftover = [i for group in grouped if group for i in group[-1]]
    full = [m for group in grouped for m in group[:-1]]
    megabatches = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    if len(leftover) >= megabatch_size:
        megabatches.insert(0, leftover[:megabatch_size])
        leftover = leftover[megabatch_size:]
    return [i for m in megabatches for i in m] + leftover


class ModalityLengthGroupedSampler:
    """A torch Sampler over `modality_grouped_indices`, re-drawn every epoch from `generator`."""

    def __init__(self, lengths: list[int], batch_size: int, world_size: int, generator):
        self.lengths, self.batch_size, self.world_size, self.generator = lengths, batch_size, world_size, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(modality_grouped_indices(self.lengths, self.batch_size, self.world_size, self.generator))
