"""The synthetic shapes world: seeded images of coloured shapes with VQA, captions and short video clips.

Difficulty is designed so a sub-million-parameter LLaVA learns it on a CPU in minutes (measured before this module
was written: shapes jittered inside their cells, or a 1e-3 learning rate, stalled between chance and 60 %):

- 112 px images (8 x 8 = 64 patches of 14 px), a 3 x 3 grid of cells, every shape *centred* in its cell;
- 1 to 4 shapes in distinct cells, (colour, shape) pairs unique in an image, so every question has one answer;
- 3 shapes x 5 saturated colours x 2 sizes, on a plain or a textured (low-amplitude noise) dark background;
- answers are single words: colours, shapes, digits, yes / no, and cell names written as one word ("top-left");
- colour, shape and existence questions name a cell ("What colour is the shape at the top-left?"); position
  questions name the object by one attribute no other shape has ("Where is the circle?", "Where is the red object?").
  Measured while designing: with questions that name objects by content instead ("Is there a triangle?", "Is there
  a red circle?"), a 2-layer LLM stayed at chance on existence and near 50 % on position after 1 900 steps (colour,
  shape, count and captions learnt). Content-keyed questions are the natural next level, not the first.
Everything is a pure function of (split, index): `sample_seed` mixes a per-split salt into the index, so train,
validation and test never share a seed and any sample can be regenerated alone.

Video clips have 3 frames; between the first and the last frame either one shape moves by one cell (left / right /
up / down, half a cell per frame) or one new shape appears (from the second frame on).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 112
GRID = 3
CELL = IMAGE_SIZE / GRID
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 9.0, "large": 14.0}  # half-extent in pixels; a cell is 37.3 px wide
POSITIONS = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("colour", "shape", "count", "position", "exist")
VIDEO_QUESTION_TYPES = ("motion", "appear")
MOTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (d row, d col)
VIDEO_FRAMES = 3
SPLITS = ("train", "val", "test")
_SPLIT_SALT = {"train": 0x5EED_0001, "val": 0x5EED_0002, "test": 0x5EED_0003}
_KIND_SALT = {"image": 11, "video": 23}


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    cell: int  # 0..8, row-major

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: tuple[int, int, int]
    textured: bool
    texture_seed: int


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    question_type: str


@dataclass(frozen=True)
class ImageSample:
    split: str
    index: int
    scene: Scene
    questions: tuple[Question, ...]
    caption: str

    @property
    def id(self) -> str:
        return f"shapes_{self.split}_{self.index:06d}"


@dataclass(frozen=True)
class VideoSample:
    split: str
    index: int
    frames: tuple[Scene, ...]  # scenes with fractional cells are drawn through `centres`
    centres: tuple[tuple[tuple[float, float], ...], ...]  # per frame, per shape: (x, y) centre in pixels
    question: Question = field(default=None)

    @property
    def id(self) -> str:
        return f"shapes_video_{self.split}_{self.index:06d}"


def sample_seed(split: str, index: int, kind: str = "image") -> int:
    """A seed unique to (split, kind, index); splits differ by a salt, so they never share a seed."""
    if split not in _SPLIT_SALT:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    digest = hashlib.sha256(f"{_SPLIT_SALT[split]}:{_KIND_SALT[kind]}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# -- scenes ------------------------------------------------------------------------------------------------------------
def cell_centre(cell: float | int, col: float | None = None) -> tuple[float, float]:
    """Pixel centre (x, y) of a cell index, or of a fractional (row, col) when `col` is given."""
    if col is None:
        row, col = divmod(int(cell), GRID)
    else:
        row = cell
    return ((col + 0.5) * CELL, (row + 0.5) * CELL)


def random_scene(rng: random.Random, num_shapes: int | None = None, exclude_cells: tuple[int, ...] = ()) -> Scene:
    num_shapes = num_shapes if num_shapes is not None else rng.randint(1, 4)
    cells = rng.sample([c for c in range(GRID * GRID) if c not in exclude_cells], num_shapes)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], num_shapes)
    shapes = tuple(
        Shape(colour=c, shape=s, size=rng.choice(tuple(SIZES)), cell=cell)
        for (c, s), cell in zip(kinds, cells, strict=True)
    )
    grey = rng.randint(20, 70)
    background = (grey, grey, grey + rng.randint(-10, 10))
    return Scene(shapes=shapes, background=background, textured=rng.random() < 0.5, texture_seed=rng.getrandbits(32))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, centre: tuple[float, float]) -> None:
    x, y = centre
    r = SIZES[shape.size]
    fill = COLOURS[shape.colour]
    if shape.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape.shape == "square":
        s = r * 0.85  # equal area-ish with the circle
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)


def render(scene: Scene, centres: tuple[tuple[float, float], ...] | None = None) -> Image.Image:
    """Draw a scene (shapes at their cell centres unless `centres` overrides them)."""
    base = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    base[:] = scene.background
    if scene.textured:
        noise = np.random.default_rng(scene.texture_seed).integers(-14, 15, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
        base = base + noise
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for i, shape in enumerate(scene.shapes):
        _draw_shape(draw, shape, centres[i] if centres is not None else cell_centre(shape.cell))
    return image


# -- language ----------------------------------------------------------------------------------------------------------
def caption(scene: Scene) -> str:
    """The canonical sentence: shapes in row-major cell order."""
    parts = [f"a {s.size} {s.colour} {s.shape} at the {s.position}" for s in sorted(scene.shapes, key=lambda s: s.cell)]
    count = len(scene.shapes)
    noun = "shape" if count == 1 else "shapes"
    return f"{NUMBER_WORDS[count]} {noun}: " + ", ".join(parts) + "."


def _plural(shape: str) -> str:
    return shape + "s"


def question_of_type(scene: Scene, question_type: str, rng: random.Random) -> Question | None:
    """One question of the given type whose answer the scene fixes uniquely, or None if there is none."""
    shapes = scene.shapes
    if question_type == "colour":
        target = rng.choice(shapes)
        return Question(f"What colour is the shape at the {target.position}?", target.colour, "colour")
    if question_type == "shape":
        target = rng.choice(shapes)
        return Question(f"What shape is at the {target.position}?", target.shape, "shape")
    if question_type == "count":
        if rng.random() < 0.5:
            return Question("How many shapes are there?", str(len(shapes)), "count")
        kind = rng.choice(SHAPES)
        return Question(f"How many {_plural(kind)} are there?", str(sum(x.shape == kind for x in shapes)), "count")
    if question_type == "position":
        # the target is named by an attribute no other shape has: a one-attribute lookup (see `_unique_reference`)
        reference = _unique_reference(scene, rng)
        if reference is None:
            return None
        words, target = reference
        return Question(f"Where is the {words}?", target.position, "position")
    if question_type == "exist":
        occupied = {x.cell for x in shapes}
        answer = "yes" if rng.random() < 0.5 else "no"
        cell = rng.choice(sorted(occupied) if answer == "yes" else [c for c in range(GRID * GRID) if c not in occupied])
        return Question(f"Is there a shape at the {POSITIONS[cell]}?", answer, "exist")
    raise ValueError(f"unknown question type {question_type!r}; allowed: {', '.join(QUESTION_TYPES)}")


def _unique_reference(scene: Scene, rng: random.Random) -> tuple[str, Shape] | None:
    """("circle", shape) or ("red object", shape) for a shape whose shape or colour no other shape shares."""
    options = []
    for x in scene.shapes:
        if sum(y.shape == x.shape for y in scene.shapes) == 1:
            options.append((x.shape, x))
        if sum(y.colour == x.colour for y in scene.shapes) == 1:
            options.append((f"{x.colour} object", x))
    return rng.choice(options) if options else None


def image_sample(split: str, index: int, questions_per_image: int = 4) -> ImageSample:
    """Scene, `questions_per_image` questions of distinct types (where the scene allows) and the caption."""
    rng = random.Random(sample_seed(split, index, "image"))
    scene = random_scene(rng)
    types = list(QUESTION_TYPES)
    rng.shuffle(types)
    questions = []
    for question_type in types:
        question = question_of_type(scene, question_type, rng)
        if question is not None:
            questions.append(question)
        if len(questions) == questions_per_image:
            break
    return ImageSample(split, index, scene, tuple(questions), caption(scene))


def video_sample(split: str, index: int) -> VideoSample:
    """A 3-frame clip: one shape moves by one cell, or one new shape appears from the second frame."""
    rng = random.Random(sample_seed(split, index, "video"))
    if rng.random() < 0.5:
        while True:
            direction = rng.choice(tuple(MOTIONS))
            d_row, d_col = MOTIONS[direction]
            mover_cell = rng.randrange(GRID * GRID)
            row, col = divmod(mover_cell, GRID)
            if 0 <= row + d_row < GRID and 0 <= col + d_col < GRID:
                break
        target_cell = (row + d_row) * GRID + (col + d_col)
        others = random_scene(rng, num_shapes=rng.randint(0, 2), exclude_cells=(mover_cell, target_cell))
        taken = {(s.colour, s.shape) for s in others.shapes}
        colour, kind = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in taken])
        mover = Shape(colour=colour, shape=kind, size=rng.choice(tuple(SIZES)), cell=mover_cell)
        scene = Scene((mover, *others.shapes), others.background, others.textured, others.texture_seed)
        centres = []
        for t in range(VIDEO_FRAMES):
            step = t / (VIDEO_FRAMES - 1)
            moved = cell_centre(row + d_row * step, col + d_col * step)
            centres.append((moved, *(cell_centre(s.cell) for s in others.shapes)))
        frames = (scene,) * VIDEO_FRAMES
        question = Question(f"Which way does the {mover.name} move?", direction, "motion")
    else:
        full = random_scene(rng, num_shapes=rng.randint(2, 4))
        newcomer = full.shapes[0]
        first = Scene(full.shapes[1:], full.background, full.textured, full.texture_seed)
        frames = (first,) + (full,) * (VIDEO_FRAMES - 1)
        centres = [tuple(cell_centre(s.cell) for s in frame.shapes) for frame in frames]
        question = Question("Which shape appears?", newcomer.shape, "appear")
    return VideoSample(split, index, frames, tuple(centres), question)


def render_video(sample: VideoSample) -> list[Image.Image]:
    return [render(scene, centres) for scene, centres in zip(sample.frames, sample.centres, strict=True)]


# -- files -------------------------------------------------------------------------------------------------------------
def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _image_struct(image: Image.Image, path: str) -> dict:
    return {"bytes": png_bytes(image), "path": path}


def vqa_records(split: str, num_images: int) -> list[dict]:
    """One row per question, like lmms-eval's VQA datasets (textvqa, gqa): image struct + question + answer."""
    rows = []
    for index in range(num_images):
        sample = image_sample(split, index)
        image = _image_struct(render(sample.scene), f"{sample.id}.png")
        for q_index, q in enumerate(sample.questions):
            rows.append(
                dict(
                    question_id=f"{sample.id}_q{q_index}",
                    image_id=sample.id,
                    image=image,
                    question=q.question,
                    answer=q.answer,
                    question_type=q.question_type,
                )
            )
    return rows


def caption_records(split: str, num_images: int, offset: int = 0) -> list[dict]:
    """One row per image, like lmms-eval's COCO caption datasets: `answer` is the list of reference captions."""
    rows = []
    for index in range(offset, offset + num_images):
        sample = image_sample(split, index)
        rows.append(
            dict(
                question_id=f"{sample.id}.png",
                id=index,
                image_id=index,
                image=_image_struct(render(sample.scene), f"{sample.id}.png"),
                question="Describe the image in one sentence.",
                answer=[sample.caption],
            )
        )
    return rows


def video_records(split: str, num_clips: int) -> list[dict]:
    rows = []
    for index in range(num_clips):
        sample = video_sample(split, index)
        frames = render_video(sample)
        rows.append(
            dict(
                question_id=sample.id,
                video=[_image_struct(f, f"{sample.id}_f{t}.png") for t, f in enumerate(frames)],
                question=sample.question.question,
                answer=sample.question.answer,
                question_type=sample.question.question_type,
            )
        )
    return rows


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows as parquet with Hugging Face features, so `datasets` decodes `image` / `video` columns to PIL."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    types = {
        "image": ImageFeature(),
        "video": List(ImageFeature()),
        "answer": List(Value("string")) if rows and isinstance(rows[0]["answer"], list) else Value("string"),
        "id": Value("int64"),
        "image_id": Value("int64") if rows and isinstance(rows[0].get("image_id"), int) else Value("string"),
    }
    features = Features({key: types.get(key, Value("string")) for key in rows[0]})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    Dataset.from_list(rows, features=features).to_parquet(str(tmp))
    tmp.replace(path)
    return path


# -- training data in LLaVA's conversation format -------------------------------------------------------------------
def _turns(pairs: list[tuple[str, str]], image_prefix: str) -> list[dict]:
    conversations = []
    for i, (question, answer) in enumerate(pairs):
        conversations.append({"from": "human", "value": (image_prefix if i == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return conversations


def write_llava_training_data(
    out_dir: str | Path, split: str, num_images: int, num_clips: int, caption_fraction: float = 0.25, workers: int = 1
) -> Path:
    """Images (PNG) + `conversations.json` in LLaVA's format (+ `regions.json` for vision pre-training).

    Each image is one multi-turn conversation of its questions; a `caption_fraction` of the images also gets a
    caption turn. A clip is one conversation with one `<image>` per frame and `image` a list of frame files.
    The PNG files are drawn by `workers` processes; the files and the JSON do not depend on how many.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    conversations, regions = [], []
    for index in range(num_images):
        sample = image_sample(split, index)
        file = _image_file(sample.id)
        pairs = [(q.question, q.answer) for q in sample.questions]
        rng = random.Random(sample_seed(split, index, "image") ^ 0xCA9)
        if rng.random() < caption_fraction:
            pairs.insert(rng.randrange(len(pairs) + 1), ("Describe the image in one sentence.", sample.caption))
        conversations.append({"id": sample.id, "image": file, "conversations": _turns(pairs, "<image>\n")})
        regions.append({"id": sample.id, "image": file, "region_labels": region_labels(sample.scene)})
    for index in range(num_clips):
        sample = video_sample(split, index)
        pair = [(sample.question.question, sample.question.answer)]
        conversations.append(
            {
                "id": sample.id,
                "image": [_image_file(sample.id, t) for t in range(VIDEO_FRAMES)],
                "conversations": _turns(pair, "<image>" * VIDEO_FRAMES + "\n"),
            }
        )
    jobs = [("image", i) for i in range(num_images)] + [("video", i) for i in range(num_clips)]
    chunks = [(out_dir, split, jobs[w::workers]) for w in range(workers)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_draw_files, chunks))
    else:
        _draw_files(chunks[0])
    random.Random(sample_seed(split, 0, "image")).shuffle(conversations)
    (out_dir / "conversations.json").write_text(json.dumps(conversations))
    (out_dir / "regions.json").write_text(json.dumps(regions))
    return out_dir


def _image_file(sample_id: str, frame: int | None = None) -> str:
    return f"images/{sample_id}.png" if frame is None else f"images/{sample_id}_f{frame}.png"


def _draw_files(chunk: tuple[Path, str, list[tuple[str, int]]]) -> None:
    """Draw and save the PNG files of some (kind, index) samples of a split."""
    out_dir, split, jobs = chunk
    for kind, index in jobs:
        if kind == "image":
            sample = image_sample(split, index)
            render(sample.scene).save(out_dir / _image_file(sample.id))
        else:
            sample = video_sample(split, index)
            for t, frame in enumerate(render_video(sample)):
                frame.save(out_dir / _image_file(sample.id, t))


def region_labels(scene: Scene) -> dict[str, list[str]]:
    """Per-cell labels on the 3 x 3 grid, row-major: the shape's colour / shape / size ("none" where a cell is empty)
    and the cell's own name, so every patch feature keeps where it is (cell-keyed questions, positions, motion)."""
    labels = {"colour": ["none"] * 9, "shape": ["none"] * 9, "size": ["none"] * 9, "cell": list(POSITIONS)}
    for s in scene.shapes:
        labels["colour"][s.cell] = s.colour
        labels["shape"][s.cell] = s.shape
        labels["size"][s.cell] = s.size
    return labels


def vocabulary() -> list[str]:
    """Every word the world's prompts and answers use (for the word-level tokenizer), in a fixed order."""
    words = ["user", "assistant", ":", "?", ".", ","]
    words += list(COLOURS) + list(SHAPES) + [_plural(s) for s in SHAPES] + list(SIZES) + list(POSITIONS)
    words += [str(i) for i in range(5)] + list(NUMBER_WORDS) + ["yes", "no"] + list(MOTIONS)
    words += "what colour is the shape object how many are there where a which way does move appears".split()
    words += "describe image in one sentence at shapes".split()
    seen, ordered = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            ordered.append(w)
    return ordered


__all__ = [
    "IMAGE_SIZE",
    "COLOURS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "QUESTION_TYPES",
    "VIDEO_QUESTION_TYPES",
    "SPLITS",
    "Shape",
    "Scene",
    "Question",
    "ImageSample",
    "VideoSample",
    "sample_seed",
    "cell_centre",
    "render",
    "caption",
    "image_sample",
    "video_sample",
    "render_video",
    "vqa_records",
    "caption_records",
    "video_records",
    "write_parquet",
    "write_llava_training_data",
    "region_labels",
    "vocabulary",
]
