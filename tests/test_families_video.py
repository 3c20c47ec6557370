"""Video through LLaVA-OneVision's and Qwen2.5-VL's own video path, on tiny checkpoints in their hub repos' layouts
(vistog_bench.testing.hub_checkpoints_families) and tiny mp4 files (vistog_bench.testing.fixtures.write_video): at
method none the answers equal transformers' documented usage (frames decoded with PyAV, `processor.apply_chat_template`
with a video part, `processor(videos=, text=)`, `generate`) and lmms-eval's own chat qwen2_5_vl; batched answers equal
batch 1; the sample log counts each video's run of video tokens; reducers give layer 0 the family's rule applied to the
whole run; a corrupt video fails its sample alone; LLaVA-NeXT keeps its frames as images."""

from __future__ import annotations

import contextlib

import av
import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from test_families import _layer0_visual_counts, images
from transformers.video_utils import VideoMetadata

from vistog_bench.adapter import VisToGChatLMM, VisToGLMM
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import family_inputs, family_of_model, find_family, video_token_id, visual_runs
from vistog_bench.reducers.families import apply_family_method
from vistog_bench.run.lmms_results import sample_lines
from vistog_bench.testing.fixtures import write_video
from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

NAMES = {"llava-onevision": "llava_onevision", "qwen2.5-vl": "qwen2_5_vl"}
QUESTIONS = ["Which way does the square move?", "What colour is the square?", "What is shown?"]
GEN = {"max_new_tokens": 5, "temperature": 0}
MAX_FRAMES = 4


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_family_layouts(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two clips of different lengths and sizes (multiples of 28 px)."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 1, frames=8, size=56, fps=4)
    write_video(root / "b.mp4", 2, frames=6, size=84, fps=3)
    return [str(root / "a.mp4"), str(root / "b.mp4")]


def video_messages(doc):
    return [
        {"role": "user", "content": [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["question"]}]}
    ]


def image_messages(doc):
    return [
        {"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]}
    ]


def requests(kinds):
    return [
        Instance(
            "generate_until", ("", kind, dict(GEN), i, "toy", "test"), 0, {"task": "toy", "doc_id": i, "repeats": 1}
        )
        for i, kind in enumerate(kinds)
    ]


def answers(lm, docs, kinds):
    lm.task_dict = {"toy": {"test": docs}}
    return [r.text if hasattr(r, "text") else r for r in lm.generate_until(requests(kinds))]


def video_docs(videos):
    return [{"video": v, "question": q} for v, q in zip(videos, QUESTIONS, strict=False)]


def lmms_eval_indices(name: str, total: int, fps: float) -> list[int]:
    """The frames lmms-eval 0.7.3 takes: llava_hf's `load_video` (np.linspace(0, n - 1, max_frames_num, dtype=int));
    chat qwen2_5_vl's nframes = min(max_num_frames, n) floored to even, read by qwen_vl_utils (rounded linspace)."""
    if name == "llava-onevision":
        return np.linspace(0, total - 1, MAX_FRAMES, dtype=int).tolist()
    from qwen_vl_utils.vision_process import smart_nframes

    count = smart_nframes({"nframes": max(2, min(MAX_FRAMES, total) // 2 * 2)}, total, fps)
    return torch.linspace(0, total - 1, count).round().long().tolist()


def lmms_eval_video_pixels() -> tuple[int, int]:
    """(min, max) pixels of a video frame under lmms-eval's qwen2_5_vl defaults, as qwen_vl_utils applies them."""
    import inspect

    from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
    from qwen_vl_utils.vision_process import VIDEO_MAX_TOKEN_NUM

    defaults = inspect.signature(Qwen2_5_VL.__init__).parameters
    return defaults["min_pixels"].default, min(defaults["max_pixels"].default, VIDEO_MAX_TOKEN_NUM * 28 * 28)


def documented(path, name, video_files):
    """transformers' documented usage: frames read with PyAV (the llava_onevision docs' `read_video_pyav`), the
    processor's chat template with a video part, `processor(videos=, text=)` (with the frames' VideoMetadata, as
    lmms-eval's qwen2_5_vl passes it, and its frame size limits), greedy `generate`. Returns (answers, prompts, what
    the LLM received in each prefill)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = find_family(NAMES[name]).stock_class().from_pretrained(path, dtype=torch.float32).eval()
    out, prompts, media = [], [], []
    for video, question in zip(video_files, QUESTIONS, strict=False):
        with av.open(video) as container:
            fps = float(container.streams.video[0].average_rate)
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # [n, H, W, 3]
        indices = lmms_eval_indices(name, len(frames), fps)
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        metadata = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=indices)
        sizes = {}
        if name == "qwen2.5-vl":
            low, high = lmms_eval_video_pixels()
            size = {"shortest_edge": low, "longest_edge": high}
            sizes = {"videos_kwargs": {"size": size, "cap_pixels_per_frame": True}}  # qwen_vl_utils' total bound
        inputs = processor(
            text=prompt, videos=[frames[indices]], video_metadata=[metadata], return_tensors="pt", **sizes
        )
        with prefill_video_inputs(model) as seen:
            ids = model.generate(**inputs, max_new_tokens=GEN["max_new_tokens"], do_sample=False)
        out.append(processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
        prompts.append(prompt)
        media += seen
    return out, prompts, media


@contextlib.contextmanager
def prefill_video_inputs(model):
    """What the LLM receives in each prefill `model` runs: input embeddings [1, T, D] (the frames' tokens in place)
    and position ids (Qwen2.5-VL's mRoPE rows, where the frames' times enter). The tiny random models' greedy answers
    barely depend on the frames; these do."""
    seen = []

    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            seen.append({"inputs_embeds": embeds.detach().clone(), "position_ids": kwargs.get("position_ids")})

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def assert_same_llm_inputs(got: list[dict], expected: list[dict], atol: float = 1e-5) -> None:
    """Prefills compared in doc order (the chat prompts' contexts are all empty: the adapter's longest-first sort keeps
    doc order, as lmms-eval's models serve them)."""
    assert len(got) == len(expected) > 0
    for ours, theirs in zip(got, expected, strict=True):
        assert ours["inputs_embeds"].shape == theirs["inputs_embeds"].shape
        torch.testing.assert_close(ours["inputs_embeds"], theirs["inputs_embeds"].float(), rtol=1e-5, atol=atol)
        if theirs["position_ids"] is not None:
            assert torch.equal(ours["position_ids"], theirs["position_ids"])


# -- method none: the stock model's video path -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_video_answers_equal_transformers_documented_usage_batched_too(layouts, videos, name):
    expected, prompts, media = documented(layouts[name], name, videos)
    ours = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES)
    with prefill_video_inputs(ours.model) as seen:
        got = answers(ours, video_docs(videos), [video_messages] * 2)
    assert got == expected and any(got)
    assert_same_llm_inputs(seen, media)
    log = ours.take_sample_log()
    assert [e["prompt"] for e in log] == prompts
    assert all(e["video_placeholders"] == 1 and e["image_placeholders"] == 0 for e in log)
    assert [e["video_frames"] for e in log] == [[len(lmms_eval_indices(name, n, 1.0))] for n in (8, 6)]
    # the run's samples file keeps what was served for each video (lmms_results.SERVED_KEYS)
    lines = sample_lines([{"doc_id": e["doc_id"], "resps": [[a]]} for e, a in zip(log, got, strict=True)], log)
    served = ("video_placeholders", "video_frames", "visual_tokens", "visual_tokens_unreduced")
    assert [[line[k] for k in served] for line in lines] == [[entry[k] for k in served] for entry in log]
    batched = VisToGChatLMM(
        pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES, batch_size=2
    )
    assert answers(batched, video_docs(videos), [video_messages] * 2) == expected


def test_video_answers_equal_lmms_eval_chat_qwen2_5_vl(layouts, videos):
    """lmms-eval's chat qwen2_5_vl with its own defaults reads and sizes the mp4 itself (qwen_vl_utils) at
    max_num_frames: same frames, grid, mRoPE positions (frame times included) and answers as the adapter. The input
    embeddings agree to 1e-3, not bitwise: qwen_vl_utils resizes the frames in 8 bits (torchvision bicubic on uint8)
    before the processor, the adapter lets the processor resize them, as transformers documents."""
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

    path = str(layouts["qwen2.5-vl"])
    reference = Qwen2_5_VL(pretrained=path, device="cpu", device_map="cpu", max_num_frames=MAX_FRAMES)
    reference.model.float()  # lmms-eval loads bfloat16; the adapter's default is float32
    ours = VisToGChatLMM(pretrained=path, method="none", device="cpu", max_frames=MAX_FRAMES)
    docs = video_docs(videos)
    with prefill_video_inputs(ours.model) as seen, prefill_video_inputs(reference.model) as media:
        got, expected = answers(ours, docs, [video_messages] * 2), answers(reference, docs, [video_messages] * 2)
    assert got == expected and any(got)
    assert_same_llm_inputs(seen, media, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_images_and_videos_in_one_batch_answer_as_batch_one(layouts, videos, name):
    docs = [*video_docs(videos), {"image": images()[0], "question": QUESTIONS[2]}]
    kinds = [video_messages, video_messages, image_messages]
    single = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES)
    batched = VisToGChatLMM(
        pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES, batch_size=3
    )
    assert answers(batched, docs, kinds) == answers(single, docs, kinds)


def test_simple_model_takes_a_video_path_as_a_video(layouts, videos):
    lm = VisToGLMM(pretrained=str(layouts["qwen2.5-vl"]), method="none", device="cpu", max_frames=MAX_FRAMES)
    lm.task_dict = {"toy": {"test": video_docs(videos)}}
    reqs = [
        Instance(
            "generate_until",
            (QUESTIONS[0], dict(GEN), lambda doc: [doc["video"]], 0, "toy", "test"),
            0,
            {"task": "toy", "doc_id": 0, "repeats": 1},
        )
    ]
    assert lm.generate_until(reqs)[0].text != ""
    (entry,) = lm.take_sample_log()
    assert (
        entry["video_placeholders"] == 1
        and "<|video_pad|>" in entry["prompt"]
        and "<|image_pad|>" not in entry["prompt"]
    )


@pytest.mark.parametrize("name", NAMES)
def test_loglikelihood_reads_the_video(layouts, videos, name):
    """Log-likelihood requests take the video path too: the continuation's log-probability is finite and depends on
    which video the sample carries."""
    lm = VisToGLMM(pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES)
    lm.task_dict = {"toy": {"test": video_docs(videos)}}
    ll = [
        Instance(
            "loglikelihood",
            (QUESTIONS[0], "left", lambda doc: [doc["video"]], i, "toy", "test"),
            0,
            {"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(2)
    ]
    (first, _), (second, _) = lm.loglikelihood(ll)
    assert -1e4 < first < 0 and -1e4 < second < 0 and first != second
    assert all(e["video_placeholders"] == 1 and "failure" not in e for e in lm.take_sample_log())


# -- visual-token accounting -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_log_counts_the_videos_run_of_video_tokens(layouts, videos, name):
    lm = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES)
    answers(lm, video_docs(videos), [video_messages] * 2)
    log = lm.take_sample_log()
    config = lm.model.config
    for entry, side in zip(log, (56, 84), strict=True):
        (frames,) = entry["video_frames"]
        if name == "llava-onevision":  # each frame's grid pooled 2 x 2 (ceil), then one newline token per video
            grid = -(-(config.vision_config.image_size // config.vision_config.patch_size) // 2)
            expected = frames * grid * grid + 1
        else:  # temporal patch 2, one token per 2 x 2 merged 14 px patches of the frame as qwen_vl_utils sizes it
            from qwen_vl_utils.vision_process import smart_resize

            low, high = lmms_eval_video_pixels()
            height, width = smart_resize(side, side, factor=28, min_pixels=low, max_pixels=high)
            expected = (frames // 2) * (height // 28) * (width // 28)
            assert expected > (frames // 2) * (side // 28) ** 2  # the tiny clips are sized up
            assert video_token_id(lm.model) != config.image_token_id
        assert entry["visual_tokens_unreduced"] == entry["visual_tokens"] == [expected]


# -- reducers on a video's run -----------------------------------------------------------------------------------------
def _video_inputs(model, processor, path, max_frames=MAX_FRAMES):
    from vistog_bench.adapter import read_video

    family = family_of_model(model)
    clip = read_video(path, lambda total: family.video_frame_indices(total, max_frames))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True
    )
    return family_inputs(processor, [prompt], [[]], [[clip]])


@pytest.mark.parametrize(
    "name,method,budget",
    [
        ("llava-onevision", "random", 300),
        ("llava-onevision", "divprune", 300),
        ("qwen2.5-vl", "divprune", 25),
        ("qwen2.5-vl", "cdpruner", 25),
        ("qwen2.5-vl", "random", 40),
    ],
)
def test_reducer_gives_layer_0_the_rule_applied_to_the_whole_video(layouts, videos, name, method, budget):
    model, processor = load_checkpoint(layouts[name])
    inputs = _video_inputs(model, processor, videos[1], max_frames=6)
    total = inputs["input_ids"].shape[1]
    (run,) = visual_runs(inputs["input_ids"][0], model)
    unreduced = int(run.numel())
    keep = find_family(NAMES[name]).kept_tokens(budget, unreduced)
    assert keep < unreduced
    apply_family_method(model, method, budget)
    assert _layer0_visual_counts(model, inputs) == [total - unreduced + keep]


@pytest.mark.parametrize("name", NAMES)
def test_reduced_video_answers_are_batch_independent_and_logged(layouts, videos, name):
    budget = 300 if name == "llava-onevision" else 25
    family = find_family(NAMES[name])
    single = VisToGChatLMM(
        pretrained=str(layouts[name]), method="divprune", budget=budget, device="cpu", max_frames=MAX_FRAMES
    )
    batched = VisToGChatLMM(
        pretrained=str(layouts[name]),
        method="divprune",
        budget=budget,
        device="cpu",
        max_frames=MAX_FRAMES,
        batch_size=2,
    )
    docs = video_docs(videos)
    assert answers(batched, docs, [video_messages] * 2) == answers(single, docs, [video_messages] * 2)
    for entry in single.take_sample_log():
        (unreduced,) = entry["visual_tokens_unreduced"]
        assert (
            entry["visual_tokens"] == [family.kept_tokens(budget, unreduced)] and entry["visual_tokens"][0] < unreduced
        )


def test_random_at_full_budget_on_video_answers_as_none(layouts, videos):
    path = str(layouts["qwen2.5-vl"])
    docs = video_docs(videos)
    none = answers(
        VisToGChatLMM(pretrained=path, method="none", device="cpu", max_frames=MAX_FRAMES), docs, [video_messages] * 2
    )
    full = VisToGChatLMM(pretrained=path, method="random", budget=100, device="cpu", max_frames=MAX_FRAMES)
    assert answers(full, docs, [video_messages] * 2) == none


def test_onevision_image_and_video_in_one_sample_fails_alone_under_a_reducer(layouts, videos):
    """OneVision's template puts a sample's images and then its videos side by side (one run of visual tokens):
    under a reducer such a sample fails in one line; a video-only sample of the same batch is reduced and served."""
    lm = VisToGChatLMM(
        pretrained=str(layouts["llava-onevision"]),
        method="random",
        budget=300,
        device="cpu",
        max_frames=MAX_FRAMES,
        batch_size=2,
    )

    def both(doc):
        return [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": doc["image"]},
                    {"type": "video", "url": doc["video"]},
                    {"type": "text", "text": doc["question"]},
                ],
            }
        ]

    docs = [{"image": images()[0], "video": videos[0], "question": QUESTIONS[0]}, video_docs(videos)[1]]
    out = answers(lm, docs, [both, video_messages])
    log = {e["doc_id"]: e for e in lm.take_sample_log()}
    assert out[0] == "" and "side by side" in log[0]["failure"] and "\n" not in log[0]["failure"]
    assert "failure" not in log[1] and log[1]["visual_tokens"] == [300] and out[1] != ""


# -- failures and the per-frame families -------------------------------------------------------------------------------
def test_corrupt_video_fails_only_its_sample(layouts, videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00garbage, not an mp4" * 50)
    lm = VisToGChatLMM(
        pretrained=str(layouts["qwen2.5-vl"]), method="none", device="cpu", max_frames=MAX_FRAMES, batch_size=2
    )
    out = answers(lm, video_docs([videos[0], str(broken)]), [video_messages] * 2)
    log = {e["doc_id"]: e for e in lm.take_sample_log()}
    assert out[1] == "" and "broken.mp4" in log[1]["failure"] and out[0] != "" and "failure" not in log[0]


def test_llava_next_keeps_frames_as_images(layouts, videos):
    lm = VisToGChatLMM(pretrained=str(layouts["llava-next"]), method="none", device="cpu", max_frames=3)
    assert answers(lm, video_docs(videos[:1]), [video_messages]) != [""]
    (entry,) = lm.take_sample_log()
    assert entry["image_placeholders"] == 3 and entry["video_placeholders"] == 0 and len(entry["visual_tokens"]) == 3


@pytest.mark.parametrize("method", ["visionzip", "vispruner"])
def test_scored_methods_refuse_a_video_sample_alone(layouts, videos, method):
    """visionzip / vispruner read the encoder's attention of images: a video sample fails in one line before the
    batch runs; the batch's image sample is reduced and served."""
    lm = VisToGChatLMM(
        pretrained=str(layouts["qwen2.5-vl"]),
        method=method,
        budget=25,
        device="cpu",
        max_frames=MAX_FRAMES,
        batch_size=2,
    )
    docs = [video_docs(videos)[0], {"image": images()[1], "question": QUESTIONS[1]}]
    out = answers(lm, docs, [video_messages, image_messages])
    log = {e["doc_id"]: e for e in lm.take_sample_log()}
    assert out[0] == "" and "encoder attention of images only" in log[0]["failure"] and "\n" not in log[0]["failure"]
    assert "failure" not in log[1] and out[1] != ""
    (unreduced,) = log[1]["visual_tokens_unreduced"]
    assert log[1]["visual_tokens"] == [find_family("qwen2_5_vl").kept_tokens(25, unreduced)]


def test_an_image_path_part_stays_an_image(layouts, videos, tmp_path):
    """lmms-eval's default messages make a path with an image extension an image part: it is served as an image."""
    images()[0].save(tmp_path / "frame.png")
    lm = VisToGChatLMM(pretrained=str(layouts["qwen2.5-vl"]), method="none", device="cpu", max_frames=MAX_FRAMES)
    out = answers(lm, [{"image": str(tmp_path / "frame.png"), "question": QUESTIONS[1]}], [image_messages])
    (entry,) = lm.take_sample_log()
    assert out != [""] and entry["image_placeholders"] == 1 and entry["video_placeholders"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_a_local_video_task_runs_through_the_video_path_in_lmms_eval(layouts, tmp_path, monkeypatch, name):
    """lmms-eval's simple_evaluate on the offline Video-MME fixture (vistog_bench.testing.fixtures): every sample
    reaches the model as one video and is scored."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from vistog_bench.run import offline_data
    from vistog_bench.run.tasks import PROJECT_TASKS
    from vistog_bench.testing.fixtures import write_fixture

    root = write_fixture(tmp_path / "mirror", rows=2, only=["videomme"])
    monkeypatch.setenv(offline_data.DATA_DIR_ENV, str(root))
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    manager = TaskManager(include_path=str(PROJECT_TASKS), include_defaults=False, verbosity="WARNING")
    lm = VisToGChatLMM(pretrained=str(layouts[name]), method="none", device="cpu", max_frames=MAX_FRAMES)
    out = evaluator.simple_evaluate(model=lm, tasks=["videomme_local"], task_manager=manager, verbosity="WARNING")
    assert "videomme_perception_score,none" in out["results"]["videomme_local"]
    log = lm.take_sample_log()
    assert len(log) == 2 and all("failure" not in e and e["video_placeholders"] == 1 for e in log)
    assert all(e["visual_tokens"] == e["visual_tokens_unreduced"] and e["visual_tokens"][0] > 0 for e in log)
