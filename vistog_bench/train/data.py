"""Training data in LLaVA-1.5's own files, read lazily: records, images, tokens, batches.

- `llava_v1_5_mix665k.json` (instruction tuning): `{"id", "image": "coco/train2017/....jpg", "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}`; multi-turn; no `image` key = text only;
  image paths relative to one root holding coco/, gqa/, ocr_vqa/, textvqa/, vg/. A list of images is a video's frames.
- `blip_laion_cc_sbu_558k.json` (alignment): the same keys, one human turn holding `<image>` and one caption; read
  with `data_format="plain"` as LLaVA's `--version plain` does.
- Region JSON (the demo's vision pre-training): `{"id", "image", "region_labels": {attribute: [G*G labels]}}`.

Images: LLaVA-1.5 pads each to a square and gives it a fixed count of placeholders (`ConversationDataset`); VisToG on
LLaVA-NeXT / OneVision sends each through the checkpoint's own processor (anyres views) and expands its placeholder
to views x N, the count evaluation gives it (`ViewConversationDataset`).

Records are kept as one buffer of JSON bytes (decoded per sample), so a 665k-sample list costs its file size and data
loader workers do not copy it page by page (detectron2's `DatasetFromList(serialize=True)` trick). A sample whose image
is missing or unreadable, or whose image tokens the length limit cuts, is replaced by the next good sample and counted
(`skipped` in each batch), so batches keep their size and every process takes the same number of steps.
"""

from __future__ import annotations

import collections
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
    for index, sample in enumerate(samples):  # every sample, before anything trains: a wrong type is one line
        if not isinstance(sample, dict) or key not in sample:
            raise UsageError(
                f"{path}: every sample needs a {key!r} field for stage {stage} (sample: {str(sample)[:80]})"
            )
        problem = sample_type_problem(sample, key)
        if problem:
            raise UsageError(f"{path}: sample {sample.get('id', f'#{index}')}: {problem}")
    return Records(samples)


def sample_type_problem(sample: dict, key: str) -> str | None:
    """What in a sample has the wrong JSON type, or None: `image` a path or a list of paths, `conversations` a list
    of {"from": str, "value": str} turns, `region_labels` an object of label lists."""
    image = sample.get("image")
    if image is not None and not (
        isinstance(image, str) or (isinstance(image, list) and all(isinstance(i, str) for i in image))
    ):
        return f"'image' must be a path or a list of paths, got {type(image).__name__}"
    value = sample[key]
    if key == "region_labels":
        if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
            return "'region_labels' must map each attribute to a list of labels"
        return None
    if not isinstance(value, list):
        return f"'conversations' must be a list of turns, got {type(value).__name__}"
    for number, turn in enumerate(value):
        if not isinstance(turn, dict):
            return f"conversations[{number}] must be an object, got {type(turn).__name__}"
        for field in ("from", "value"):
            if not isinstance(turn.get(field), str):
                return f"conversations[{number}][{field!r}] must be a string, got {type(turn.get(field)).__name__}"
    return None


def check_image_folder(records: Records, image_folder: Path, first: int = 1000) -> None:
    """Refuse a folder holding none of the images the first `first` samples name: every image sample would be
    skipped, and a run on a mix would train on its text-only samples alone."""
    named = [files[0] for files in (image_files(records[i]) for i in range(min(first, len(records)))) if files]
    if named and not any((image_folder / name).is_file() for name in named):
        raise UsageError(
            f"--image-folder {image_folder} (default: the data file's folder) holds none of the {len(named)} "
            f"images the first samples name, e.g. {image_folder / named[0]}"
        )


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


def open_images(image_folder: Path, files: list[str]) -> list:
    """The sample's images as RGB PIL images; a missing or unreadable one skips the sample."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for name in files:
        path = image_folder / name
        if not path.is_file():
            raise SkipSample("missing image (check --image-folder)")
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError):
            raise SkipSample("unreadable image") from None
    return images


class ImageLoader:
    """LLaVA-1.5's image path: each image padded to a square (`expand2square`), then the image processor."""

    def __init__(self, image_folder: Path, image_processor):
        self.image_folder = image_folder
        self.image_processor = image_processor
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.background = tuple(int(255 * m) for m in mean)

    def __call__(self, files: list[str]):
        images = [expand2square(image, self.background) for image in open_images(self.image_folder, files)]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]  # [K, 3, H, W]


def expand_each(prompt: str, counts, image_token: str) -> str:
    """Each placeholder of `prompt` repeated to the next of `counts` (an iterator: image i of the sample takes
    counts[i]); a placeholder beyond the images stays single, so the sample's token check names the mismatch."""
    pieces = prompt.split(image_token)
    return pieces[0] + "".join(image_token * next(counts, 1) + piece for piece in pieces[1:])


class SkippingDataset:
    """`__getitem__(i)` returns sample i, or the first good one after it, with `skipped` = how many were passed over."""

    max_skips = 100  # that many bad samples in a row is a wrong --image-folder or --max-length, not bad luck

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        reasons = collections.Counter()
        tries = min(self.max_skips, len(self))
        for skipped in range(tries):
            try:
                item = self.sample((index + skipped) % len(self))
            except SkipSample as exc:
                reasons[str(exc)] += 1
                continue
            return {**item, "skipped": skipped}
        which = f"all {tries} samples" if tries == len(self) else f"{tries} samples in a row from #{index}"
        why = "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common())
        raise UsageError(f"nothing to train on: {which} skipped; {why}")


class ConversationDataset(SkippingDataset):
    """LLaVA conversations -> input_ids / labels (answers only) / pixel_values [K, 3, H, W], each image's
    placeholder expanded to `tokens_per_image` (LLaVA-1.5 and VisToG on it: one view per image).

    Prompts come from `prompts` (a `model.prompting.PromptBuilder` over the checkpoint's chat template), the same
    builder evaluation uses: round 0's prompt is exactly what `vistog-bench run` feeds the trained checkpoint. Each
    answer is followed by the end-of-sequence token, which is trained (LLaVA's target). With `data_format="plain"`
    a sample is `<image>{caption}\\n` with the loss on the caption (LLaVA's alignment stage)."""

    def __init__(
        self,
        records,
        image_folder,
        processor,
        prompts,
        tokens_per_image: int,
        max_length: int,
        data_format: str = "conversation",
    ):
        self.records = records
        self.tokenizer = processor.tokenizer
        self.prompts = prompts
        self.image_token = prompts.image_token
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.data_format = data_format
        self.image_folder = Path(image_folder)
        self.image_processor = processor.image_processor
        self.load_images = ImageLoader(self.image_folder, processor.image_processor)
        if self.tokenizer.eos_token_id is None:
            raise UsageError("the tokenizer has no eos token; LLaVA training ends each answer with it")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _answer_ids(self, prompt_ids: list[int], prompt: str, answer: str) -> list[int]:
        """The answer's tokens as they follow the prompt in one text (a SentencePiece tokenizer marks a word start
        differently at the start of a text), else tokenised alone. A space joins them (`ASSISTANT: {a}`, `[/INST]
        {a}`) unless the prompt ends in whitespace: OneVision's template puts the answer right after `assistant\n`
        (`'\n' + content['text']`, llava-hf/llava-onevision-qwen2-7b-ov-hf chat_template.json)."""
        answer = answer if prompt[-1:].isspace() else " " + answer
        joint = self._ids(prompt + answer)
        if joint[: len(prompt_ids)] == prompt_ids:
            return joint[len(prompt_ids) :]
        return self._ids(answer)

    def rounds(self, record: dict) -> list[tuple[str, str, bool]]:
        """(prompt, answer, end with eos) per round, prompts' image placeholders not yet expanded."""
        from ..model.prompting import Turn

        turns = record["conversations"]
        if turns and turns[0].get("from") != "human":  # LLaVA drops a leading non-human turn
            turns = turns[1:]
        if self.data_format == "plain":
            if len(turns) != 2 or self.image_token not in turns[0].get("value", ""):
                raise UsageError(
                    f"sample {record.get('id')}: the plain format is one human turn with "
                    f"{self.image_token} and one caption"
                )
            # LLaVA replaces the human turn by the image token alone; the caption ends with the separator, not eos
            return [(self.image_token, turns[1]["value"] + PLAIN_SEPARATOR, False)]
        conversation = []
        # strict=False: a last human turn without a gpt answer has nothing to train on (LLaVA masks it) and is dropped
        for human, gpt in zip(turns[0::2], turns[1::2], strict=False):
            if human.get("from") != "human" or gpt.get("from") != "gpt":
                raise UsageError(f"sample {record.get('id')}: turns must alternate human / gpt")
            conversation += [Turn("user", human["value"]), Turn("assistant", gpt["value"])]
        return [(prompt, answer, True) for prompt, answer in self.prompts.training_rounds(conversation)]

    def images(self, files: list[str]) -> tuple[dict, list[int]]:
        """The model inputs of a sample's images and the placeholder count of each."""
        return {"pixel_values": self.load_images(files)}, [self.tokens_per_image] * len(files)

    def encode(self, record: dict, counts: list[int] | None = None) -> tuple[list[int], list[int]]:
        """input_ids and labels, image i's placeholder expanded to counts[i] (default: tokens_per_image each)."""
        if counts is None:
            counts = [self.tokens_per_image] * len(image_files(record))
        tokenizer = self.tokenizer
        input_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(input_ids)
        remaining = iter(counts)
        for prompt, answer, eos in self.rounds(record):
            prompt = expand_each(prompt, remaining, self.image_token)
            prompt_ids = self._ids(prompt)
            answer_ids = self._answer_ids(prompt_ids, prompt, answer) + ([tokenizer.eos_token_id] if eos else [])
            input_ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        return input_ids[: self.max_length], labels[: self.max_length]

    def sample(self, index: int) -> dict:
        import torch

        record = self.records[index]
        files = image_files(record)
        images, counts = self.images(files) if files else ({}, [])
        input_ids, labels = self.encode(record, counts)
        image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        found = sum(t == image_token_id for t in input_ids)
        if found != sum(counts):
            if found < sum(counts) and len(input_ids) == self.max_length:
                raise SkipSample(f"image tokens cut by --max-length {self.max_length}")
            raise UsageError(
                f"sample {record.get('id')}: {len(files)} images need {sum(counts)} image "
                f"tokens, the text has {found}; check its <image> placeholders"
            )
        if all(label == IGNORE_INDEX for label in labels):  # the loss over no token is NaN
            raise SkipSample(f"no answer token (none in the sample, or all cut by --max-length {self.max_length})")
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), **images}


class ViewConversationDataset(ConversationDataset):
    """VisToG on LLaVA-NeXT / OneVision: each image through the checkpoint's own image processor (anyres: base view +
    tiles) -> pixel_values [sum V, 3, H, W] (the sample's views flat, padding views dropped) and image_sizes [K, 2];
    image i's placeholder expands to `view_tokens.counts(image_sizes)[i]` = views x N, what the model's `inputs`
    gives the same image at evaluation."""

    def __init__(
        self, records, image_folder, processor, prompts, view_tokens, max_length: int, data_format: str = "conversation"
    ):
        super().__init__(
            records, image_folder, processor, prompts, view_tokens.tokens_per_view, max_length, data_format
        )
        self.view_tokens = view_tokens  # model.modeling_views.ViewTokens

    def images(self, files: list[str]) -> tuple[dict, list[int]]:
        import torch

        data = self.image_processor(open_images(self.image_folder, files), return_tensors="pt")
        sizes = data["image_sizes"]  # [K, 2] (height, width)
        views = self.view_tokens.views(sizes)
        pixel_values = torch.cat(
            [pv[:v] for pv, v in zip(data["pixel_values"], views, strict=True)]
        )  # <- [K, V_max, 3, H, W]
        return {"pixel_values": pixel_values, "image_sizes": sizes}, self.view_tokens.counts(sizes)


def collate_conversations(items: list[dict], pad_token_id: int) -> dict:
    """Right-pad to the longest sample; images of the batch concatenated in sample order, as LLaVA expects (a view
    family's views and image sizes alike: the model splits the views per image by the sizes)."""
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
    for key in ("pixel_values", "image_sizes"):  # [sum K (or sum V), 3, H, W]; [sum K, 2]
        values = [item[key] for item in items if key in item]
        if values:
            batch[key] = torch.cat(values)
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
        self.classes = {a: sorted({label for s in samples for label in s["region_labels"][a]}) for a in self.attributes}

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
    megabatches = [
        sorted(indices[i : i + megabatch_size], key=lambda j: lengths[j], reverse=True)
        for i in range(0, len(indices), megabatch_size)
    ]
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
