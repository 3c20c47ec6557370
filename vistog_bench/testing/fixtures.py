"""A tiny local mirror for every offline task: `python -m vistog_bench.testing.fixtures OUT_DIR`.

A few rows per task, in the hub datasets' column schemas and file layout (see docs/offline-data.md), with images
drawn by PIL and videos written by PyAV (a few frames of moving shapes): nothing is downloaded. Point the harness at it
with `--data-dir OUT_DIR` (or VISTOG_DATA_DIR=OUT_DIR) to try every `*_local` task offline. Every row's reference
answer is right for its picture (the circle really is red), so a model that sees can score above chance.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from datasets import Features, Image, List, Value

from vistog_bench.run.offline_data import MVBENCH_SUBTASKS

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw_image(index: int, size: int = 96):
    """Shape number `index`: a colored circle/square/triangle on a light background. Returns (PIL image, facts)."""
    from PIL import Image, ImageDraw

    color = list(COLORS)[index % len(COLORS)]
    shape = SHAPES[index % len(SHAPES)]
    count = 1 + index % 3
    img = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    step = size // count
    for k in range(count):
        x0, y0, s = k * step + 4, size // 2 - step // 3, max(step - 8, 8)
        box = (x0, y0, x0 + s, y0 + s)
        if shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        else:
            draw.polygon([(x0, y0 + s), (x0 + s, y0 + s), (x0 + s // 2, y0)], fill=COLORS[color])
    draw.text((4, 4), f"#{index}", fill=(0, 0, 0))
    return img, {"color": color, "shape": shape, "count": count, "text": f"#{index}"}


def png(img) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_video(path: Path, index: int, frames: int = 8, size: int = 32, fps: int = 4) -> None:
    """A tiny mp4 (MPEG-4 part 2, which every ffmpeg build encodes): a colored square moving left to right."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    color = list(COLORS.values())[index % len(COLORS)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for t in range(frames):
            arr = np.full((size, size, 3), 240, dtype=np.uint8)
            x = (t * (size - 8)) // max(frames - 1, 1)
            arr[size // 2 - 4 : size // 2 + 4, x : x + 8] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write(rows: list[dict], features, path: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [row[name] for row in rows] for name in features}
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


# ---------------------------------------------------------------- image tasks


def gqa(root: Path, n: int) -> None:
    repo = root / "lmms-lab/GQA"
    images, rows = [], []
    for i in range(n):
        img, f = draw_image(i)
        image_id = f"n{100000 + i}"
        images.append({"id": image_id, "image": png(img)})
        for j, (q, a) in enumerate(
            [(f"What color is the {f['shape']}?", f["color"]), (f"Is there a {f['shape']} in the picture?", "yes")]
        ):
            rows.append(
                {
                    "id": f"{20000000 + 10 * i + j}",
                    "imageId": image_id,
                    "question": q,
                    "answer": a,
                    "fullAnswer": f"The answer is {a}.",
                    "isBalanced": True,
                    "groups": {"global": None, "local": f"10c-{f['shape']}_color"},
                    "entailed": "",
                    "equivalent": "",
                    "types": {"structural": "query", "semantic": "attr", "detailed": "colorObj"},
                    "annotations": {"answer": "", "question": "", "fullAnswer": ""},
                    "semantic": [{"operation": "select", "dependencies": [], "argument": f"{f['shape']} (0)"}],
                    "semanticStr": f"select: {f['shape']} (0)->query: color [0]",
                }
            )
    _write(
        images,
        Features({"id": Value("string"), "image": Image()}),
        repo / "testdev_balanced_images/testdev-00000-of-00001.parquet",
    )
    feats = Features(
        {
            "id": Value("string"),
            "imageId": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "fullAnswer": Value("string"),
            "isBalanced": Value("bool"),
            "groups": {"global": Value("string"), "local": Value("string")},
            "entailed": Value("string"),
            "equivalent": Value("string"),
            "types": {"structural": Value("string"), "semantic": Value("string"), "detailed": Value("string")},
            "annotations": {"answer": Value("string"), "question": Value("string"), "fullAnswer": Value("string")},
            "semantic": List(
                {"operation": Value("string"), "dependencies": List(Value("int32")), "argument": Value("string")}
            ),
            "semanticStr": Value("string"),
        }
    )
    _write(rows, feats, repo / "testdev_balanced_instructions/testdev-00000-of-00001.parquet")


def textvqa(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        rows.append(
            {
                "image_id": f"{0xABC000 + i:x}",
                "question_id": 34602 + i,
                "question": "what is written in the corner?",
                "question_tokens": ["what", "is", "written", "in", "the", "corner"],
                "image": png(img),
                "image_width": img.width,
                "image_height": img.height,
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "answers": [f["text"]] * 10,
                "image_classes": ["Poster"],
                "set_name": "val",
                "ocr_tokens": [f["text"]],
            }
        )
    feats = Features(
        {
            "image_id": Value("string"),
            "question_id": Value("int32"),
            "question": Value("string"),
            "question_tokens": List(Value("string")),
            "image": Image(),
            "image_width": Value("int32"),
            "image_height": Value("int32"),
            "flickr_original_url": Value("string"),
            "flickr_300k_url": Value("string"),
            "answers": List(Value("string")),
            "image_classes": List(Value("string")),
            "set_name": Value("string"),
            "ocr_tokens": List(Value("string")),
        }
    )
    _write(rows, feats, root / "lmms-lab/textvqa/data/validation-00000-of-00001.parquet")


def vqav2(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        answers = [{"answer": f["color"], "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
        rows.append(
            {
                "question_type": "what color is the",
                "multiple_choice_answer": f["color"],
                "answers": answers,
                "image_id": 262148 + i,
                "answer_type": "other",
                "question_id": 262148000 + i,
                "question": f"What color is the {f['shape']}?",
                "image": png(img),
            }
        )
    feats = Features(
        {
            "question_type": Value("string"),
            "multiple_choice_answer": Value("string"),
            "answers": List(
                {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
            ),
            "image_id": Value("int64"),
            "answer_type": Value("string"),
            "question_id": Value("int64"),
            "question": Value("string"),
            "image": Image(),
        }
    )
    _write(rows, feats, root / "lmms-lab/VQAv2/data/validation-00000-of-00001.parquet")


def pope(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        other = SHAPES[(i + 1) % len(SHAPES)]
        for j, (shape, ans) in enumerate([(f["shape"], "yes"), (other, "no")]):
            rows.append(
                {
                    "id": str(2 * i + j),
                    "question_id": str(2 * i + j + 1),
                    "question": f"Is there a {shape} in the image?",
                    "answer": ans,
                    "image_source": f"COCO_val2014_{i:012d}",
                    "image": png(img),
                    "category": "adversarial",
                }
            )
    feats = Features(
        {
            "id": Value("string"),
            "question_id": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "image_source": Value("string"),
            "image": Image(),
            "category": Value("string"),
        }
    )
    _write(rows, feats, root / "lmms-lab/POPE/data/test-00000-of-00001.parquet")


def mme(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        # MME asks two questions per image (one yes, one no); perception and cognition categories both appear.
        category = "color" if i % 2 == 0 else "numerical_calculation"
        other = next(c for c in COLORS if c != f["color"])
        for color, ans in ((f["color"], "Yes"), (other, "No")):
            rows.append(
                {
                    "question_id": f"{category}/{i:05d}.png",
                    "image": png(img),
                    "question": f"Is there a {color} {f['shape']} in the image? Please answer yes or no.",
                    "answer": ans,
                    "category": category,
                }
            )
    feats = Features(
        {
            "question_id": Value("string"),
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "category": Value("string"),
        }
    )
    _write(rows, feats, root / "lmms-lab/MME/data/test-00000-of-00001.parquet")


def scienceqa(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        choices = list(SHAPES)
        rows.append(
            {
                "image": png(img),
                "question": "Which shape is shown?",
                "choices": choices,
                "answer": choices.index(f["shape"]),
                "hint": "Look at the picture." if i % 2 else "",
                "task": "closed choice",
                "grade": "grade2",
                "subject": "natural science",
                "topic": "geometry",
                "category": "Shapes",
                "skill": "Identify shapes",
                "lecture": "",
                "solution": f"It is a {f['shape']}.",
            }
        )
    feats = Features(
        {
            "image": Image(),
            "question": Value("string"),
            "choices": List(Value("string")),
            "answer": Value("int8"),
            "hint": Value("string"),
            "task": Value("string"),
            "grade": Value("string"),
            "subject": Value("string"),
            "topic": Value("string"),
            "category": Value("string"),
            "skill": Value("string"),
            "lecture": Value("string"),
            "solution": Value("string"),
        }
    )
    _write(rows, feats, root / "lmms-lab/ScienceQA/ScienceQA-IMG/test-00000-of-00001.parquet")


def mmbench(root: Path, n: int) -> None:
    rows = []
    letters = "ABCD"
    for i in range(n):
        img, f = draw_image(i)
        options = list(COLORS)
        rows.append(
            {
                "index": i,
                "question": f"What color is the {f['shape']}?",
                "hint": "nan" if i % 2 else "A drawing.",
                **{letters[k]: options[k] for k in range(4)},
                "answer": letters[options.index(f["color"])],
                "category": "attribute_recognition",
                "image": png(img),
                "source": "fixture",
                "L2-category": "finegrained_perception (instance-level)",
                "comment": "nan",
                "split": "dev",
            }
        )
    feats = Features(
        {
            "index": Value("int64"),
            "question": Value("string"),
            "hint": Value("string"),
            **{c: Value("string") for c in letters},
            "answer": Value("string"),
            "category": Value("string"),
            "image": Image(),
            "source": Value("string"),
            "L2-category": Value("string"),
            "comment": Value("string"),
            "split": Value("string"),
        }
    )
    _write(rows, feats, root / "lmms-lab/MMBench/en/dev-00000-of-00001.parquet")


def _caption(f: dict) -> list[str]:
    things = f"{f['count']} {f['color']} {f['shape']}{'s' if f['count'] > 1 else ''}"
    return [f"A drawing of {things}.", f"{things.capitalize()} on a white background.", f"Simple {f['color']} shapes."]


def coco(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        rows.append(
            {
                "question_id": f"{397133 + i:012d}.jpg",
                "image": png(img),
                "question": "Please carefully observe the image and come up with a caption for the image.",
                "answer": _caption(f),
                "id": 397133 + i,
                "license": 4,
                "file_name": f"{397133 + i:012d}.jpg",
                "coco_url": "",
                "height": img.height,
                "width": img.width,
                "date_captured": "2013-11-14 17:02:52",
            }
        )
    feats = Features(
        {
            "question_id": Value("string"),
            "image": Image(),
            "question": Value("string"),
            "answer": List(Value("string")),
            "id": Value("int64"),
            "license": Value("int8"),
            "file_name": Value("string"),
            "coco_url": Value("string"),
            "height": Value("int32"),
            "width": Value("int32"),
            "date_captured": Value("string"),
        }
    )
    _write(rows, feats, root / "lmms-lab/COCO-Caption2017/data/val-00000-of-00001.parquet")


def nocaps(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        caps = _caption(f)
        rows.append(
            {
                "image": png(img),
                "image_coco_url": "",
                "image_date_captured": "2018-11-21 11:04:07",
                "image_file_name": f"{i:016x}.jpg",
                "image_height": img.height,
                "image_width": img.width,
                "image_id": i,
                "image_license": 2,
                "image_open_images_id": f"{i:016x}",
                "annotations_ids": [10 * i + k for k in range(len(caps))],
                "annotations_captions": caps,
            }
        )
    feats = Features(
        {
            "image": Image(),
            "image_coco_url": Value("string"),
            "image_date_captured": Value("string"),
            "image_file_name": Value("string"),
            "image_height": Value("int32"),
            "image_width": Value("int32"),
            "image_id": Value("int32"),
            "image_license": Value("int8"),
            "image_open_images_id": Value("string"),
            "annotations_ids": List(Value("int32")),
            "annotations_captions": List(Value("string")),
        }
    )
    _write(rows, feats, root / "lmms-lab/NoCaps/data/validation-00000-of-00001.parquet")


def flickr(root: Path, n: int) -> None:
    rows = []
    for i in range(n):
        img, f = draw_image(i)
        caps = _caption(f)
        rows.append(
            {
                "image": png(img),
                "caption": caps,
                "sentids": [str(5 * i + k) for k in range(len(caps))],
                "img_id": str(i),
                "filename": f"{1000092795 + i}.jpg",
            }
        )
    feats = Features(
        {
            "image": Image(),
            "caption": List(Value("string")),
            "sentids": List(Value("string")),
            "img_id": Value("string"),
            "filename": Value("string"),
        }
    )
    _write(rows, feats, root / "lmms-lab/flickr30k/data/test-00000-of-00001.parquet")


# ---------------------------------------------------------------- video tasks

DIRECTIONS = ("A. left to right", "B. right to left", "C. top to bottom", "D. it does not move")


def videomme(root: Path, n: int) -> None:
    repo = root / "lmms-lab/Video-MME"
    rows = []
    for i in range(n):
        video_id = f"fixture{i:04d}"
        write_video(repo / "data" / f"{video_id}.mp4", i)
        rows.append(
            {
                "video_id": f"{i + 1:03d}",
                "duration": "short",
                "domain": "Knowledge",
                "sub_category": "Humanity & History",
                "url": f"https://www.youtube.com/watch?v={video_id}",
                "videoID": video_id,
                "question_id": f"{i + 1:03d}-1",
                "task_type": "Temporal Perception",
                "question": "In which direction does the square move?",
                "options": list(DIRECTIONS),
                "answer": "A",
            }
        )
    feats = Features({k: List(Value("string")) if k == "options" else Value("string") for k in rows[0]})
    _write(rows, feats, repo / "videomme/test-00000-of-00001.parquet")


def nextqa(root: Path, n: int) -> None:
    repo = root / "lmms-lab/NExTQA"
    rows = []
    for i in range(n):
        video = 4010069381 + i
        write_video(repo / "NExTVideo" / f"{video}.mp4", i)
        answers = ["moves right", "moves left", "moves down", "stays still", "disappears"]
        rows.append(
            {
                "video": video,
                "frame_count": 8,
                "width": 32,
                "height": 32,
                "question": "what does the square do",
                "answer": 0,
                "qid": i,
                "type": "TN",
                **{f"a{k}": answers[k] for k in range(5)},
            }
        )
    feats = Features(
        {
            "video": Value("int64"),
            "frame_count": Value("int64"),
            "width": Value("int64"),
            "height": Value("int64"),
            "question": Value("string"),
            "answer": Value("int64"),
            "qid": Value("int64"),
            "type": Value("string"),
            **{f"a{k}": Value("string") for k in range(5)},
        }
    )
    _write(rows, feats, repo / "MC/test-00000-of-00001.parquet")


def mvbench(root: Path, n: int) -> None:
    from lmms_eval.tasks.mvbench.utils import DATA_LIST

    repo = root / "OpenGVLab/MVBench"
    for s, sub in enumerate(MVBENCH_SUBTASKS):
        entries = []
        for i in range(n):
            video = f"{sub}_{i}.mp4"
            write_video(repo / DATA_LIST[sub] / video, s + i, frames=4)
            candidates = ["left to right", "right to left", "top to bottom"]
            entries.append(
                {
                    "video": video,
                    "question": "In which direction does the square move?",
                    "candidates": candidates,
                    "answer": candidates[0],
                }
            )
        path = repo / "json" / f"{sub}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=1))


WRITERS = {
    "gqa": gqa,
    "textvqa": textvqa,
    "vqav2": vqav2,
    "pope": pope,
    "mme": mme,
    "scienceqa": scienceqa,
    "mmbench": mmbench,
    "coco": coco,
    "nocaps": nocaps,
    "flickr": flickr,
    "videomme": videomme,
    "nextqa": nextqa,
    "mvbench": mvbench,
}


def write_fixture(out_dir, rows: int = 3, only=None) -> Path:
    """Write the tiny mirror under `out_dir` (all datasets, or the WRITERS keys in `only`); returns the folder."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, writer in WRITERS.items():
        if only is None or name in only:
            writer(root, rows)
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vistog_bench.testing.fixtures", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", help="folder to write the mirror into (created)")
    parser.add_argument("--rows", type=int, default=3, help="images/videos per dataset (default 3)")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(WRITERS)}")
    args = parser.parse_args(argv)
    only = None
    if args.only:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in only if s not in WRITERS]
        if unknown:
            print(f"unknown fixture dataset(s) {unknown}; choose from {', '.join(WRITERS)}", file=sys.stderr)
            return 2
    if args.rows < 1:
        print("--rows must be at least 1", file=sys.stderr)
        return 2
    root = write_fixture(args.out_dir, args.rows, only)
    print(f"wrote a fixture mirror to {root}; use --data-dir {root} (or VISTOG_DATA_DIR={root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
