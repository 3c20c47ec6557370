"""Resumable training states, written and read without pickle: `output_dir/checkpoints/checkpoint_<i>/`.

One checkpoint (format "vistog-bench-train-state", version 1):

    shared.safetensors + shared.json        the main process: TrainerState, scheduler, gradient scaler, accelerate's
                                            micro-step counter; the model and optimizer states when every process
                                            holds all of them (one process, DDP)
    process_<r>.safetensors + process_<r>.json
                                            process r: its RNG states (python, numpy, torch CPU, accelerator device);
                                            under FSDP2 its own shards of the model and optimizer states
    checkpoint.json                         written last: format, step, processes, sharding, every file's size

Tensors go through safetensors, everything else through JSON: a tensor's place in the JSON is {"__tensor__": name},
tuples and dicts with non-string keys are tagged likewise. Reading builds nothing but tensors, numbers, strings,
lists and dicts, so a checkpoint cannot run code. (accelerate 1.16's `save_state` pickles optimizer, scheduler, RNG
and registered states and `load_state` unpickles them with weights_only=False, accelerate/checkpointing.py
`load_accelerator_state` / `load_custom_state`; torch.distributed.checkpoint, accelerate's FSDP format, reads its
`.metadata` with `pickle.load`, torch 2.14 distributed/checkpoint/filesystem.py `FileSystemReader.read_metadata`:
neither is used.)

Nothing is lost: a checkpoint is written as `checkpoint_<i>.tmp`, completed by checkpoint.json and renamed;
`latest` is the newest folder holding checkpoint.json; `--save-total-limit` removes the oldest complete checkpoints
only once the new one is complete; the number continues past every checkpoint_<i> there is; a `.tmp` folder (a run
killed while saving) is never read and is removed at the next resume or save. A folder holding any file its
checkpoint.json does not list (a pickle planted in it, accelerate's own format) is refused in one line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from ..errors import UsageError

FORMAT = "vistog-bench-train-state"
VERSION = 1
MARKER = "checkpoint.json"
SHARED = "shared"
NUMBERED = re.compile(r"checkpoint_(\d+)")
TORN = ".tmp"  # suffix of a checkpoint being written
PICKLED = (".pkl", ".bin", ".pt", ".pth", ".distcp", ".metadata")  # state files of accelerate / torch formats


def checkpoints_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def numbered(root: Path) -> dict[int, Path]:
    """Every checkpoint_<i> folder under `root`, complete or not, by i."""
    if not root.is_dir():
        return {}
    found = ((NUMBERED.fullmatch(p.name), p) for p in root.iterdir() if p.is_dir())
    return {int(match.group(1)): path for match, path in found if match}


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first."""
    folders = numbered(root)
    return [folders[i] for i in sorted(folders) if (folders[i] / MARKER).is_file()]


def latest(output_dir) -> Path:
    root = checkpoints_root(output_dir)
    done = complete(root)
    if done:
        return done[-1]
    names = ", ".join(p.name for p in numbered(root).values())
    if names:
        raise UsageError(
            f"--resume-from-checkpoint latest: no complete checkpoint under {root} ({names}: no {MARKER}, "
            "written by another program or an older version)"
        )
    raise UsageError(f"--resume-from-checkpoint latest: no checkpoint under {root}")


def remove_torn(root: Path) -> None:
    """Remove what a run killed while saving left (main process only)."""
    for folder in root.glob(f"checkpoint_*{TORN}"):
        shutil.rmtree(folder, ignore_errors=True)


# -- tensors through safetensors, the rest through JSON ----------------------------------------------------------------
def _encode(value, tensors: dict, name: str, views: dict, storages: set):
    """`value` as JSON with its tensors moved into `tensors` (named by their path in `value`)."""
    import torch
    from torch.distributed.tensor import DTensor

    if isinstance(value, torch.Tensor):
        tensor = (value.to_local() if isinstance(value, DTensor) else value).detach().contiguous()
        if tensor.numel():
            # safetensors refuses tensors sharing memory: a tied weight is stored once, another view of it copied
            storage = tensor.untyped_storage().data_ptr()
            view = (storage, tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            if view in views:
                return {"__tensor__": views[view]}
            if storage in storages:
                tensor = tensor.clone()
            views[view] = name
            storages.add(storage)
        tensors[name] = tensor
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: _encode(v, tensors, f"{name}/{key}", views, storages) for key, v in value.items()}
        items = value.items()
        return {"__items__": [[key, _encode(v, tensors, f"{name}/{key}", views, storages)] for key, v in items]}
    if isinstance(value, (list, tuple)):
        values = [_encode(v, tensors, f"{name}/{i}", views, storages) for i, v in enumerate(value)]
        return {"__tuple__": values} if isinstance(value, tuple) else values
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{name}: a {type(value).__name__} has no safe encoding")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {"__tensor__"}:
        return tensors[value["__tensor__"]]
    if value.keys() == {"__tuple__"}:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if value.keys() == {"__items__"}:
        return {key: _decode(v, tensors) for key, v in value["__items__"]}
    return {key: _decode(v, tensors) for key, v in value.items()}


def write_failure(exc: Exception, path: Path) -> OSError:
    """A failed write as an OSError naming `path` (safetensors reports the OS error inside its own exception's
    message: "I/O error: File too large (os error 27)"), so the CLI prints one line (exit 3 for a full disk)."""
    code = getattr(exc, "errno", None)
    if code is None:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), str(getattr(exc, "filename", None) or path))


def _written(path: Path, write) -> None:
    """`write(path)`, synced to disk."""
    from safetensors import SafetensorError

    try:
        write(path)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    except (OSError, SafetensorError) as exc:
        raise write_failure(exc, path) from None


def write_bundle(folder: Path, stem: str, value: dict) -> None:
    """`value` as `stem.safetensors` (its tensors) + `stem.json` (the rest)."""
    from safetensors.torch import save_file

    tensors: dict = {}
    skeleton = _encode(value, tensors, stem, {}, set())
    _written(folder / f"{stem}.safetensors", lambda path: save_file(tensors, path))
    _written(folder / f"{stem}.json", lambda path: path.write_text(json.dumps(skeleton)))


def read_bundle(folder: Path, stem: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / f"{stem}.safetensors"
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return _decode(_read_json(folder / f"{stem}.json"), tensors)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"{path} is not readable JSON ({exc})") from None


# -- RNG states ----------------------------------------------------------------------------------------------------
def _device_random():
    """torch's module for the accelerator device's RNG (torch.cuda, torch.xpu, ...), or None on CPU."""
    import torch

    return (
        torch.get_device_module(torch.accelerator.current_accelerator()) if torch.accelerator.is_available() else None
    )


def rng_states() -> dict:
    import random

    import numpy as np
    import torch

    numpy = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key": uint32[624], "pos"}, ...}
    states = {
        "python": random.getstate(),
        "numpy": {**numpy, "state": {"key": numpy["state"]["key"].tolist(), "pos": int(numpy["state"]["pos"])}},
        "torch": torch.get_rng_state(),
    }
    device = _device_random()
    if device is not None:
        states["device"] = device.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": np.array(numpy["state"]["key"], np.uint32)}})
    torch.set_rng_state(states["torch"])
    device = _device_random()
    if device is not None and "device" in states:
        device.set_rng_state_all(states["device"])


# -- save ----------------------------------------------------------------------------------------------------------
def refuse_unsupported(config, accelerator) -> None:
    """DeepSpeed saves its engine with its own pickles (read back with weights_only=False): no resumable states."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED and (
        config.save_steps or config.resume_from_checkpoint
    ):
        raise UsageError(
            "--save-steps / --resume-from-checkpoint: resumable states are written for one process, DDP and FSDP2; "
            "DeepSpeed's own are pickles, never loaded here: launch with fsdp2.yaml to save them"
        )


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _all_succeeded(accelerator, failed: bool) -> bool:
    """Every process learns whether all of them succeeded (one gather: no process is left waiting)."""
    import torch

    return not accelerator.gather(torch.tensor([int(failed)], device=accelerator.device)).any().item()


def _give_up(accelerator, error: OSError | None, folder: Path, last: Path | None):
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
    kept = f"the last complete checkpoint, {last}, is intact" if last else "no earlier checkpoint"
    if error is None:  # another process could not write its part; it names the file
        raise UsageError(f"{folder.name} not written (another process failed to write its part); {kept}")
    raise OSError(error.errno, f"{error.strerror} ({folder.name} removed; {kept})", error.filename)


def save(config, accelerator, module, optimizer, scheduler, state) -> Path:
    """The resumable state of this step as the next checkpoint_<i>; every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = checkpoints_root(config.output_dir)
    accelerator.wait_for_everyone()
    index = max(numbered(root), default=-1) + 1
    folder = root / f"checkpoint_{index}{TORN}"
    if accelerator.is_main_process:
        remove_torn(root)
        folder.mkdir(parents=True)
    accelerator.wait_for_everyone()
    last = (complete(root) or [None])[-1]
    model_state, optimizer_state = get_state_dict(module, optimizer.optimizer)  # FSDP2: this process's shards
    weights = {"model": model_state, "optimizer": optimizer_state}
    shared = {
        "trainer": state.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "accelerate_step": accelerator.step,
    }
    error = None
    try:
        own = {"rng": rng_states(), **(weights if _sharded(accelerator) else {})}
        write_bundle(folder, f"process_{accelerator.process_index}", own)
        if accelerator.is_main_process:
            write_bundle(folder, SHARED, {**shared, **({} if _sharded(accelerator) else weights)})
    except OSError as exc:
        error = exc
    if not _all_succeeded(accelerator, error is not None):
        _give_up(accelerator, error, folder, last)
    if accelerator.is_main_process:
        try:
            _complete(folder, root / f"checkpoint_{index}", state.step, accelerator)
        except OSError as exc:
            error = exc
        else:
            for old in complete(root)[: -config.save_total_limit] if config.save_total_limit else ():
                shutil.rmtree(old)
    if not _all_succeeded(accelerator, error is not None):
        _give_up(accelerator, error, folder, last)
    return root / f"checkpoint_{index}"


def _complete(folder: Path, final: Path, step: int, accelerator) -> None:
    """checkpoint.json (every file and its size: a cut file is found at resume), then the rename that makes the
    checkpoint visible; both synced."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "processes": accelerator.num_processes,
        "sharded": _sharded(accelerator),
        "files": files,
    }
    _written(folder / MARKER, lambda path: path.write_text(json.dumps(manifest, indent=1) + "\n"))
    os.replace(folder, final)
    descriptor = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# -- resume --------------------------------------------------------------------------------------------------------
def checked(folder: Path, accelerator) -> dict:
    """The checkpoint.json of `folder` once the folder is found to be a complete checkpoint of this layout, holding
    exactly the files it lists, at their sizes; anything else is one UsageError line."""
    if not folder.is_dir():
        raise UsageError(f"--resume-from-checkpoint: no such folder {folder}")
    names = sorted(p.name for p in folder.iterdir())
    if MARKER not in names:
        pickled = [name for name in names if name.endswith(PICKLED)]
        if pickled:
            raise UsageError(
                f"{folder} holds pickled state ({', '.join(pickled[:3])}): never loaded, since unpickling can run "
                "code; resume from a checkpoint written by this version (safetensors + JSON)"
            )
        if "config.json" in names:
            raise UsageError(
                f"{folder} is a model folder, not a resumable state: start from it with --model; "
                "--resume-from-checkpoint takes OUTPUT_DIR/checkpoints/checkpoint_<i> or latest"
            )
        raise UsageError(f"{folder} is not a complete checkpoint (no {MARKER})")
    manifest = _read_json(folder / MARKER)
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise UsageError(f"{folder / MARKER} is not a {FORMAT} version {VERSION} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, int) and "/" not in k for k, v in files.items()):
        raise UsageError(f"{folder / MARKER}: 'files' must map file names to sizes")
    extra = sorted(set(names) - set(files) - {MARKER})
    if extra:
        raise UsageError(
            f"{folder} holds {', '.join(extra)}, which its {MARKER} does not list: refused (checkpoints hold "
            "safetensors and JSON only; a file put in one, a pickle above all, may carry code)"
        )
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
            raise UsageError(f"{path} is {found}, {MARKER} records {size} bytes: the checkpoint is damaged")
    ours = (accelerator.num_processes, _sharded(accelerator))
    if (manifest.get("processes"), manifest.get("sharded")) != ours:
        raise UsageError(
            f"{folder} was written by {manifest.get('processes')} process(es), sharded={manifest.get('sharded')}; "
            f"this run has {ours[0]}, sharded={ours[1]}: resume with the same launch"
        )
    return manifest


def _like(template, loaded, name: str):
    """`loaded` (a plain tensor read back) laid out as `template`: this process's shard of the same DTensor, or a
    tensor on the template's device."""
    import torch
    from torch.distributed.tensor import DTensor

    local = template.to_local() if isinstance(template, DTensor) else template
    if not isinstance(loaded, torch.Tensor) or tuple(loaded.shape) != tuple(local.shape):
        shape = list(loaded.shape) if isinstance(loaded, torch.Tensor) else type(loaded).__name__
        raise UsageError(f"{name}: the checkpoint holds {shape}, this run's model {list(local.shape)}")
    loaded = loaded.to(device=local.device, dtype=local.dtype)
    if isinstance(template, DTensor):
        return DTensor.from_local(
            loaded,
            template.device_mesh,
            template.placements,
            run_check=False,
            shape=template.shape,
            stride=template.stride(),
        )
    return loaded


def _load_weights(module, optimizer, model_state: dict, optimizer_state: dict, folder: Path) -> None:
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_state_dict

    template = get_model_state_dict(module)
    if set(model_state) != set(template):
        differ = sorted(set(model_state) ^ set(template))
        raise UsageError(f"{folder} was written for another model ({len(differ)} weights differ, e.g. {differ[0]})")
    model_state = {key: _like(template[key], value, key) for key, value in model_state.items()}
    for key, values in optimizer_state["state"].items():  # Adam's moments: shaped (and sharded) as their weight
        optimizer_state["state"][key] = {
            k: _like(template[key], v, f"{key} {k}") if isinstance(v, torch.Tensor) and v.dim() else v
            for k, v in values.items()
        }
    set_state_dict(module, optimizer.optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def _as_current(saved, current: dict, what: str) -> dict:
    """`saved` if it has the keys and value types of `current` (a fresh object's state_dict; where that holds None,
    a value set later: None, a tensor or a plain scalar), so what JSON read cannot break the run later."""
    import torch

    if not isinstance(saved, dict) or saved.keys() != current.keys():
        raise UsageError(f"the {what} state has other fields than this run's ({sorted(current)})")
    for key, value in current.items():
        fits = (
            isinstance(saved[key], (torch.Tensor, str, int, float, type(None)))
            if value is None
            else type(saved[key]) is type(value)
        )
        if not fits:
            raise UsageError(
                f"the {what} state's {key!r} is {type(saved[key]).__name__}, this run's {type(value).__name__}"
            )
    return saved


def resume(config, accelerator, module, optimizer, scheduler, state) -> Path:
    """Restore everything `save` wrote; returns the checkpoint folder."""
    import torch

    if accelerator.is_main_process:
        remove_torn(checkpoints_root(config.output_dir))
    where = config.resume_from_checkpoint
    folder = latest(config.output_dir) if where == "latest" else Path(where)
    checked(folder, accelerator)
    try:
        shared = read_bundle(folder, SHARED)
        own = read_bundle(folder, f"process_{accelerator.process_index}")
        weights = own if _sharded(accelerator) else shared
        _load_weights(module, optimizer, weights["model"], weights["optimizer"], folder)
        scheduler.load_state_dict(_as_current(shared["scheduler"], scheduler.state_dict(), "scheduler"))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(_as_current(shared["scaler"], accelerator.scaler.state_dict(), "scaler"))
        state.load_state_dict(_as_current(shared["trainer"], state.state_dict(), "trainer"))
        if state.epoch_generator_state is not None:  # set at the next epoch's start: tried here
            torch.Generator().set_state(state.epoch_generator_state)
        accelerator.step = int(shared["accelerate_step"])
        set_rng_states(own["rng"])
    except UsageError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UsageError(f"{folder}: a state this run cannot restore ({type(exc).__name__}: {first})") from None
    return folder
