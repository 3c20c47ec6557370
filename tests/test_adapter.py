"""The lmms-eval adapter on a tiny checkpoint: parity with lmms-eval's own llava_hf, batching, stop strings,
log-likelihood, per-sample failures. Requests are real lmms-eval `Instance`s over an in-memory task split."""

import io

import pytest
import torch
from lmms_eval.api.instance import GenerationResult, Instance
from PIL import Image
from testers import random_images, save_tiny_llava

from vistog_bench.adapter import VisToGLMM
from vistog_bench.errors import UsageError
from vistog_bench.model import VisToGForConditionalGeneration, load_checkpoint

QUESTIONS = ["what colour is the shape ?", "how many shapes are there ?", "is there a red circle ?", "describe image"]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=2)


@pytest.fixture(scope="module")
def vistog_dir(llava_dir, tmp_path_factory):
    model, processor = load_checkpoint(llava_dir)
    torch.manual_seed(0)
    vistog = VisToGForConditionalGeneration.from_llava(model, num_semantic_tokens=16)
    path = tmp_path_factory.mktemp("tiny-vistog")
    vistog.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def task_split(images):
    return {"toy": {"test": [{"image": image, "question": q} for image, q in zip(images, QUESTIONS, strict=False)]}}


def requests(count, gen_kwargs=None):
    gen_kwargs = gen_kwargs or {"max_new_tokens": 5, "temperature": 0, "until": ["</s>"]}
    return [
        Instance(
            request_type="generate_until",
            arguments=(QUESTIONS[i], dict(gen_kwargs), lambda doc: [doc["image"]], i, "toy", "test"),
            idx=0,
            metadata={"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(count)
    ]


def texts(outputs):
    return [o.text if isinstance(o, GenerationResult) else o for o in outputs]


def test_answers_equal_lmms_eval_llava_hf_at_full_budget(llava_dir):
    from lmms_eval.models.simple.llava_hf import LlavaHf

    images = random_images(4, seed=7)
    ours = VisToGLMM(pretrained=str(llava_dir), method="none", budget=576, device="cpu", dtype="float32")
    ours.task_dict = task_split(images)
    reference = LlavaHf(pretrained=str(llava_dir), device="cpu", device_map="cpu", dtype="float32")
    reference.task_dict = task_split(images)
    expected = reference.generate_until(requests(4))
    got = ours.generate_until(requests(4))
    assert all(isinstance(o, GenerationResult) for o in got)
    assert texts(got) == expected
    assert all(o.token_counts.input_tokens > 576 and 0 < o.token_counts.output_tokens <= 5 for o in got)


@pytest.mark.parametrize("method,budget", [("none", 576), ("vistog", 16)])
def test_batch_gives_the_same_answers_as_batch_one(llava_dir, vistog_dir, method, budget):
    path = vistog_dir if method == "vistog" else llava_dir
    images = random_images(4, seed=11)
    single = VisToGLMM(pretrained=str(path), method=method, budget=budget, device="cpu", batch_size=1)
    batched = VisToGLMM(pretrained=str(path), method=method, budget=budget, device="cpu", batch_size=3)
    single.task_dict = batched.task_dict = task_split(images)
    assert texts(batched.generate_until(requests(4))) == texts(single.generate_until(requests(4)))


def test_until_strings_cut_the_answer(vistog_dir):
    lm = VisToGLMM(pretrained=str(vistog_dir), budget=16, device="cpu")
    lm.task_dict = task_split(random_images(4, seed=3))
    full = texts(lm.generate_until(requests(1, {"max_new_tokens": 6, "temperature": 0})))[0]
    words = full.split()
    assert len(words) >= 2
    cut = texts(lm.generate_until(requests(1, {"max_new_tokens": 6, "temperature": 0, "until": [words[1]]})))[0]
    assert cut == full.split(words[1], 1)[0]


def test_loglikelihood_prefers_the_greedy_continuation(vistog_dir):
    lm = VisToGLMM(pretrained=str(vistog_dir), budget=16, device="cpu")
    lm.task_dict = task_split(random_images(4, seed=3))
    greedy = texts(lm.generate_until(requests(1, {"max_new_tokens": 1, "temperature": 0})))[0].strip()
    other = "yes" if greedy != "yes" else "no"
    ll = [
        Instance(
            "loglikelihood",
            (QUESTIONS[0], answer, lambda doc: [doc["image"]], 0, "toy", "test"),
            0,
            {"task": "toy", "doc_id": 0, "repeats": 1},
        )
        for answer in (greedy, other)
    ]
    (ll_greedy, is_greedy), (ll_other, other_greedy) = lm.loglikelihood(ll)
    assert is_greedy and not other_greedy
    assert ll_greedy > ll_other and ll_greedy < 0


def test_corrupt_image_fails_only_its_sample(vistog_dir):
    lm = VisToGLMM(pretrained=str(vistog_dir), budget=16, device="cpu", batch_size=2)
    split = task_split(random_images(2, seed=3))
    split["toy"]["test"][1]["image"] = io.BytesIO(b"not an image")
    lm.task_dict = split
    reqs = requests(2)
    reqs[1].arguments = (QUESTIONS[1], reqs[1].arguments[1], lambda doc: [Image.open(doc["image"])], 1, "toy", "test")
    answers = texts(lm.generate_until(reqs))
    assert answers[1] == "" and answers[0] != ""
    failures = [entry for entry in lm.take_sample_log() if "failure" in entry]
    assert [f["doc_id"] for f in failures] == [1]
    assert "UnidentifiedImageError" in failures[0]["failure"]


def test_bad_method_and_budget(llava_dir, vistog_dir):
    with pytest.raises(UsageError, match="unknown method 'tomee'"):
        VisToGLMM(pretrained=str(llava_dir), method="tomee", device="cpu")
    with pytest.raises(UsageError, match="gives 16 tokens per image, not budget 64"):
        VisToGLMM(pretrained=str(vistog_dir), method="vistog", budget=64, device="cpu")
    with pytest.raises(UsageError, match="budget must be 576"):
        VisToGLMM(pretrained=str(llava_dir), method="none", budget=64, device="cpu")
    with pytest.raises(UsageError, match="needs a VisToG checkpoint"):
        VisToGLMM(pretrained=str(llava_dir), method="vistog", device="cpu")


def test_method_options_through_model_args(llava_dir):
    """lmms-eval's `--model_args ...,method=tome[order=spatial,matching=model]` keeps the bracketed commas: the model
    serves tome with both options, and names the method by its label (profile records, cells)."""
    from vistog_bench.reducers import applied_method

    lm = VisToGLMM.create_from_arg_string(
        f"pretrained={llava_dir},method=tome[matching=model,order=spatial],budget=64,device=cpu"
    )
    assert lm.method == "tome[order=spatial,matching=model]" and lm.budget == 64
    assert applied_method(lm.model).options == {"order": "spatial", "matching": "model"}
    assert lm.model.model.vision_tower.token_merge.order == "spatial"  # what the encoder runs with
    with pytest.raises(UsageError, match="method tome has no option 'ratio'"):
        VisToGLMM.create_from_arg_string(f"pretrained={llava_dir},method=tome[ratio=2],budget=64,device=cpu")


def test_multi_round_is_refused(vistog_dir):
    lm = VisToGLMM(pretrained=str(vistog_dir), budget=16, device="cpu")
    with pytest.raises(NotImplementedError, match="not supported"):
        lm.generate_until_multi_round([])


def test_a_video_on_llava_1_5_becomes_max_frames_images(llava_dir, tmp_path):
    """LLaVA-1.5 has no video path: a video visual is `max_frames` frames, one image placeholder (576 tokens) each."""
    from vistog_bench.testing.fixtures import write_video

    write_video(tmp_path / "clip.mp4", 0, frames=6)
    lm = VisToGLMM(pretrained=str(llava_dir), method="none", device="cpu", max_frames=3)
    lm.task_dict = {"toy": {"test": [{"video": str(tmp_path / "clip.mp4")}]}}
    reqs = [
        Instance(
            "generate_until",
            (QUESTIONS[3], {"max_new_tokens": 3, "temperature": 0}, lambda doc: [doc["video"]], 0, "toy", "test"),
            0,
            {"task": "toy", "doc_id": 0, "repeats": 1},
        )
    ]
    (result,) = lm.generate_until(reqs)
    (entry,) = lm.take_sample_log()
    assert entry["image_placeholders"] == 3 and entry["video_placeholders"] == 0 and entry["video_frames"] == []
    assert entry["prompt"].count("<image>") == 3 and result.token_counts.input_tokens > 3 * 576


def test_prompt_builder_places_video_placeholders_after_the_images(processor):
    from vistog_bench.model.prompting import LLAVA_PLAIN_CHAT_TEMPLATE, STRING, ChatTemplate, PromptBuilder, Turn

    template = ChatTemplate(LLAVA_PLAIN_CHAT_TEMPLATE, "test", STRING)
    builder = PromptBuilder(template, processor.tokenizer, "<image>", "<video>")
    prompt = builder.generation_prompt([Turn("user", "what moves ?", images=1, videos=2)])
    assert prompt == "USER: <image> <video> <video>\nwhat moves ? ASSISTANT:"
    with pytest.raises(UsageError, match="video token"):
        PromptBuilder(template, processor.tokenizer).generation_prompt([Turn("user", "q", videos=1)])


def test_each_rank_of_a_multi_process_launch_serves_on_its_own_gpu():
    """torchrun / accelerate launch set WORLD_SIZE and LOCAL_RANK; lmms-eval leaves the device to the model: rank r
    takes cuda:r whatever CUDA index was asked, a CPU run stays on the CPU, a lone process keeps what it asked."""
    from vistog_bench.adapter import process_device

    ranks = [{"WORLD_SIZE": "2", "LOCAL_RANK": str(rank)} for rank in (0, 1)]
    assert [process_device("cuda", env) for env in ranks] == ["cuda:0", "cuda:1"]
    assert [process_device("cuda:0", env) for env in ranks] == ["cuda:0", "cuda:1"]
    assert process_device("cpu", ranks[1]) == "cpu"
    assert process_device("cuda:3", {}) == "cuda:3" and process_device("cuda", {"WORLD_SIZE": "1"}) == "cuda"
    assert process_device(None, ranks[1]) == ("cuda:1" if torch.cuda.is_available() else "cpu")
