"""Direct evaluation of a tiny model on the shapes world (no lmms-eval): greedy answers, exact match per type.

The lmms-eval tasks in tasks/shapes/ score the same way (`normalise_answer` is shared); this path exists for tests
and for the trainer's own checks, where starting lmms-eval would cost more than the evaluation.

    python -m vistog_bench.demo.evaluate vistog_bench/demo/checkpoints/tiny-vistog-16 [--images 150 --clips 80]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict

from . import world


def normalise_answer(text: str) -> str:
    """Lower case, no space before punctuation (a word-level tokenizer decodes "shapes : a"), no final full stop."""
    return re.sub(r"\s+([?.,:;!])", r"\1", text.strip().lower()).rstrip(".").strip()


def generate_answers(model, processor, questions, images, *, max_new_tokens: int = 4, batch_size: int = 32):
    """Greedy answers to single-turn LLaVA prompts; `images[i]` is the list of images (frames) of question i."""
    import torch

    from ..model.processing import build_inputs, llava_prompt

    tokenizer = processor.tokenizer
    answers = []
    for start in range(0, len(questions), batch_size):
        chunk_q = questions[start : start + batch_size]
        chunk_i = images[start : start + batch_size]
        prompts = [llava_prompt(q, num_images=len(i)) for q, i in zip(chunk_q, chunk_i, strict=True)]
        inputs = build_inputs(processor, prompts, chunk_i, model.num_visual_tokens)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [normalise_answer(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def coco_caption_score(results, metric: str) -> float:
    """One COCO caption metric over `{"answer": [references], "pred": caption}` records: PTB tokenisation, then
    pycocoevalcap's scorer, as lmms-eval's coco_cap aggregation does (without its COCO index and submission file)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    references = {i: [{"caption": a} for a in r["answer"]] for i, r in enumerate(results)}
    predictions = {i: [{"caption": r["pred"]}] for i, r in enumerate(results)}
    tokenizer = PTBTokenizer()
    references, predictions = tokenizer.tokenize(references), tokenizer.tokenize(predictions)
    scorers = {"METEOR": Meteor, "ROUGE_L": Rouge, "CIDEr": Cider}
    scorer = Bleu(4) if metric.startswith("Bleu") else scorers[metric]()
    score, _ = scorer.compute_score(references, predictions)
    if metric.startswith("Bleu"):
        score = score[int(metric.split("_")[-1]) - 1]
    return float(score)


def evaluate_captions(model, processor, split: str = "test", num_images: int = 60, first: int = 150) -> dict:
    """BLEU-4 and CIDEr of greedy captions against the canonical sentence (the shapes_caption task's images)."""
    samples = [world.image_sample(split, i) for i in range(first, first + num_images)]
    predictions = generate_answers(
        model,
        processor,
        ["Describe the image in one sentence."] * len(samples),
        [[world.render(s.scene)] for s in samples],
        max_new_tokens=48,
        batch_size=16,
    )
    records = [{"answer": [s.caption], "pred": p} for s, p in zip(samples, predictions, strict=True)]
    return {m: coco_caption_score(records, m) for m in ("Bleu_4", "CIDEr")} | {
        "exact_match": sum(p == normalise_answer(s.caption) for s, p in zip(samples, predictions, strict=True))
        / len(samples)
    }


def accuracy_by_type(types, answers, targets) -> dict[str, float]:
    hits, counts = defaultdict(int), defaultdict(int)
    for question_type, answer, target in zip(types, answers, targets, strict=True):
        counts[question_type] += 1
        hits[question_type] += answer == normalise_answer(target)
    result = {"overall": sum(hits.values()) / max(1, sum(counts.values()))}
    result.update({t: hits[t] / counts[t] for t in sorted(counts)})
    result["n"] = sum(counts.values())
    return result


def evaluate_vqa(model, processor, split: str = "test", num_images: int = 150, first: int = 0) -> dict[str, float]:
    questions, images, targets, types = [], [], [], []
    for index in range(first, first + num_images):
        sample = world.image_sample(split, index)
        image = world.render(sample.scene)
        for q in sample.questions:
            questions.append(q.question)
            images.append([image])
            targets.append(q.answer)
            types.append(q.question_type)
    answers = generate_answers(model, processor, questions, images)
    return accuracy_by_type(types, answers, targets)


def evaluate_video(model, processor, split: str = "test", num_clips: int = 80) -> dict[str, float]:
    samples = [world.video_sample(split, i) for i in range(num_clips)]
    answers = generate_answers(
        model,
        processor,
        [s.question.question for s in samples],
        [world.render_video(s) for s in samples],
        batch_size=16,
    )
    return accuracy_by_type([s.question.question_type for s in samples], answers, [s.question.answer for s in samples])


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..model.loading import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="test", choices=world.SPLITS)
    parser.add_argument("--images", type=int, default=150, help="images (about 4 questions each)")
    parser.add_argument("--clips", type=int, default=80)
    parser.add_argument("--captions", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for path in args.checkpoints:
        model, processor = load_checkpoint(path)
        start = time.perf_counter()
        vqa = evaluate_vqa(model, processor, args.split, args.images)
        video = evaluate_video(model, processor, args.split, args.clips) if args.clips else {}
        captions = evaluate_captions(model, processor, args.split, args.captions) if args.captions else {}
        record = {
            "checkpoint": str(path),
            "budget": model.num_visual_tokens,
            "vqa": vqa,
            "video": video,
            "caption": captions,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
