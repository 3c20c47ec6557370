"""LLaVA-1.5's data files as the trainer reads them: multi-turn, text-only, plain alignment format, missing and
corrupt images skipped and counted, modality-length grouped batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vistog_bench.demo.build import write_fresh_model
from vistog_bench.errors import UsageError
from vistog_bench.model.loading import load_processor
from vistog_bench.model.prompting import PromptBuilder, find_template
from vistog_bench.train.data import (
    IGNORE_INDEX,
    ConversationDataset,
    Records,
    collate_conversations,
    load_records,
    modality_grouped_indices,
)

TOKENS = 64  # the demo model's patches per image


@pytest.fixture(scope="module")
def processor_and_prompts(tmp_path_factory):
    folder = write_fresh_model(tmp_path_factory.mktemp("fresh"))
    processor = load_processor(folder)
    return processor, PromptBuilder(find_template(processor, folder), processor.tokenizer)


def write_images(folder, names):
    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / name)


MIX665K = [  # the shapes of llava_v1_5_mix665k.json records: several image folders, multi-turn, text-only
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "How many shapes are there?"},
            {"from": "gpt", "value": "two"},
        ],
    },
    {
        "id": "2354786",
        "image": "gqa/images/2354786.jpg",
        "conversations": [{"from": "human", "value": "Is there a square?\n<image>"}, {"from": "gpt", "value": "yes"}],
    },
    {
        "id": "text-0",
        "conversations": [{"from": "human", "value": "Describe a circle."}, {"from": "gpt", "value": "a round shape"}],
    },
    {
        "id": "missing",
        "image": "vg/VG_100K/1.jpg",
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a square"}],
    },
]


def dataset_of(tmp_path, records, processor_and_prompts, **kw):
    processor, prompts = processor_and_prompts
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return ConversationDataset(load_records(path, "llava"), tmp_path, processor, prompts, TOKENS, 2048, **kw)


def test_mix665k_multi_turn_text_only_and_missing_image(tmp_path, processor_and_prompts):
    write_images(tmp_path, ["coco/train2017/000000033471.jpg", "gqa/images/2354786.jpg"])
    dataset = dataset_of(tmp_path, MIX665K, processor_and_prompts)
    tokenizer = processor_and_prompts[0].tokenizer
    first = dataset[0]
    assert first["skipped"] == 0 and first["pixel_values"].shape == (1, 3, 112, 112)
    answers = [tokenizer.decode(first["input_ids"][first["labels"] != IGNORE_INDEX])]
    assert answers == ["red </s> two </s>"]  # both rounds trained, each ending with eos; prompts not
    assert "pixel_values" not in dataset[2] and dataset[2]["skipped"] == 0  # text only: no image, no image tokens
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (dataset[1]["input_ids"] == image_id).sum() == TOKENS  # `{q}\n<image>` as LLaVA writes it too
    assert (dataset[2]["input_ids"] == image_id).sum() == 0
    replaced = dataset[3]  # missing image: the next sample (wrapping round) is used instead, and counted
    assert replaced["skipped"] == 1 and torch.equal(replaced["input_ids"], first["input_ids"])
    batch = collate_conversations([dataset[i] for i in range(4)], pad_token_id=tokenizer.pad_token_id)
    assert batch["skipped"].item() == 1 and batch["pixel_values"].shape[0] == 3


def test_corrupt_image_is_skipped(tmp_path, processor_and_prompts):
    write_images(tmp_path, ["coco/train2017/000000033471.jpg"])
    (tmp_path / "gqa/images").mkdir(parents=True)
    (tmp_path / "gqa/images/2354786.jpg").write_bytes(b"not a jpeg")
    dataset = dataset_of(tmp_path, MIX665K[:3], processor_and_prompts)
    item = dataset[1]
    assert item["skipped"] == 1 and "pixel_values" not in item  # moved on to the text-only sample


def test_plain_alignment_format(tmp_path, processor_and_prompts):
    """blip_laion_cc_sbu_558k.json through LLaVA's `--version plain`: `<image>{caption}\\n`, loss on the caption."""
    write_images(tmp_path, ["00453/004539375.jpg"])
    record = {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "a red circle"},
        ],
    }
    dataset = dataset_of(tmp_path, [record], processor_and_prompts, data_format="plain")
    tokenizer = processor_and_prompts[0].tokenizer
    item = dataset[0]
    ids = item["input_ids"].tolist()
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 1 + TOKENS + len(
        tokenizer("a red circle\n", add_special_tokens=False)["input_ids"]
    )
    assert tokenizer.decode(item["input_ids"][item["labels"] != IGNORE_INDEX]).strip() == "a red circle"
    assert "summary" not in tokenizer.decode(ids)  # the human text is dropped, as LLaVA's preprocess_plain does
    with pytest.raises(UsageError, match="plain format"):
        dataset_of(tmp_path, MIX665K[:1], processor_and_prompts, data_format="plain").encode(MIX665K[0])


def test_records_decode_lazily_and_keep_modality_lengths():
    records = Records(MIX665K)
    assert len(records) == 4 and records[2] == MIX665K[2]
    assert records.lengths == [13, 6, -6, 6]  # words of all turns, negative without an image (LLaVA)


def test_modality_grouped_batches_are_one_modality_and_reproducible():
    rng = np.random.default_rng(0)
    lengths = [int(n) if i % 3 else -int(n) for i, n in enumerate(rng.integers(5, 200, 200))]
    order = modality_grouped_indices(lengths, batch_size=4, world_size=2, generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(200))
    megabatches = [order[i : i + 8] for i in range(0, len(order) - 8, 8)]
    mixed = [m for m in megabatches if len({lengths[i] > 0 for i in m}) > 1]
    assert len(mixed) <= 1  # only the leftovers of the two modalities share a megabatch
    again = modality_grouped_indices(lengths, 4, 2, torch.Generator().manual_seed(0))
    assert again == order
    assert modality_grouped_indices(lengths, 4, 2, torch.Generator().manual_seed(1)) != order
