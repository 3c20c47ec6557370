"""What a method is, declared once in its own file: `MethodSpec` (read by `registry.py`, `methods.py`, the CLI).

    SPEC = MethodSpec(
        "pool", "2-D average pooling of the patch grid", acts=(ENCODER,), where="after the vision tower",
        build=_build, reference="none (PyTorch's adaptive_avg_pool2d)",
    )

Glossary: P patches per image, K the budget, L decoder layers. A method's `build(model, budget, seed, options)` returns
the `Parts` it installs on a LLaVA-1.5 model (a VisToGForConditionalGeneration with VisToG off); `config_problem`
says, from a config alone, why it cannot run there (beyond the rules every method of its convention shares,
`methods.config_problem`). Options are a typed table (`Option`): `check_options` refuses an unknown name, a wrong type
or a value outside `choices` in one line, and the CLI's `tome[order=spatial]` text goes through `parse_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

# Where a method acts (MethodSpec.acts): what the profiler times and the methods table shows.
ENCODER = "encoder"  # inside the vision encoder or between it and the projector
LLM_INPUT = "LLM input"  # at decoder layer 0, on the projected tokens
INSIDE_LLM = "inside the LLM"  # between decoder layers

# How `budget` counts visual tokens per image (MethodSpec.budget_convention, AppliedMethod.budget_convention).
BUDGET_LLM_INPUT = "llm_input"  # every decoder layer works on `budget` tokens per image
AFTER_LAYER = "after_layer"  # FastV's own: `budget` from layer `fastv_layer` on, all P before it
LAYER_MEAN = "layer_mean"  # the mean over decoder layers ("equivalent tokens", PyramidDrop / SparseVLM)
CONVENTIONS = (BUDGET_LLM_INPUT, AFTER_LAYER, LAYER_MEAN)

LLAVA = "llava"  # LLaVA-1.5 (stock `llava` and `vistog` configs): the model every method is written for
EVERY_FAMILY = ("*",)  # LLaVA-1.5 and every family of model.families (there at the LLM input, reducers/families.py)
PAPER_DEPTH = 32  # the papers' LLM depth (LLaVA-1.5-7B / 13B's Vicuna-7B): `paper_layers` are given for it
FIXED_COUNT = "its schedule assumes one fixed visual-token count per image"  # why in-LLM methods skip the families


@dataclass(frozen=True)
class Option:
    """One option of a method: `apply_method(model, name, budget, **{option: value})`, `--method 'name[option=v]'`."""

    name: str
    type: type  # int | float | str; bool is refused (True would pass as an int)
    default: Any  # what the method uses when the option is not given; None: derived (`help` says how)
    help: str
    choices: tuple = ()  # the values allowed, the default first; empty: any value of `type` (the method checks range)

    def describe(self) -> str:
        """ " (a / b)" with the choices (default first), " (default)", or "" when derived, for tables."""
        if self.choices:
            return f" ({' / '.join(map(str, self.choices))})"
        return "" if self.default is None else f" ({self.default})"


@dataclass(frozen=True)
class Parts:
    """What a method installs on a LLaVA-1.5 model: each None where the method has none."""

    reducer: Any = None  # a TokenReducer, after the vision tower
    merge: Any = None  # a TokenMerge, inside the encoder
    pruner: Any = None  # an LLMPruner, inside the LLM
    tower_hooks: tuple = ()  # vision-tower hooks it reads (install(tower) / remove()): VScan's shallow attention


@dataclass(frozen=True)
class MethodSpec:
    """Everything the package knows about one method; `registry.py` finds it by name."""

    name: str
    summary: str  # one line: what it does (and the paper)
    acts: tuple[str, ...]  # ENCODER / LLM_INPUT / INSIDE_LLM, in the order they run; () reduces nothing
    where: str  # where exactly, for the methods table ("after the vision tower (uses CLS attention + keys)")
    build: Callable[..., Parts] | None = None  # (model, budget, seed, options) -> Parts; None: nothing to install
    budget_convention: str = BUDGET_LLM_INPUT  # CONVENTIONS
    prompt_tokens: str = "budget"  # what each <image> of the prompt expands to: "budget", "P", "K0 (encoder stage)"
    options: tuple[Option, ...] = ()
    paper_layers: tuple[int, ...] = ()  # decoder layers where it prunes, of a PAPER_DEPTH-layer LLM (scaled elsewhere)
    stage_keep: float | None = None  # K1 / K0 of a two-stage layer-mean method (K0 tokens until its layer)
    paper: str = ""  # the paper's layers and ratios, and where they are stated
    families: tuple[str, ...] = (LLAVA,)  # model types whose stock checkpoints it runs on (EVERY_FAMILY: all)
    not_on_families: str | Mapping[str, str] = FIXED_COUNT  # why not on the others (per model type, or one reason)
    family_scores: bool = False  # on the other families it reads the encoder's attention (reducers/family_attention.py)
    reference: str = ""  # the implementation followed: repository @ commit (docs/reducers.md, fidelity table)
    config_problem: Callable[..., str | None] | None = None  # (config, budget, options) -> why not, or None
    trained: bool = False  # runs on a trained checkpoint of its own (vistog), not on a stock one

    @property
    def training_free(self) -> bool:
        """Installs a reduction on a stock model (every method but `none` and `vistog`)."""
        return bool(self.acts) and not self.trained

    def serves(self, model_type: str) -> bool:
        """Runs on a checkpoint of this model type (a trained method: on its own checkpoint of that family)."""
        return self.families == EVERY_FAMILY or model_type in self.families

    def option(self, name: str) -> Option | None:
        return next((option for option in self.options if option.name == name), None)

    def family_refusal(self, model_type: str) -> str:
        reason = self.not_on_families
        return reason[model_type] if isinstance(reason, Mapping) else reason

    def settings(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option as the method runs with `options` given: the given value, else the default (None: derived
        from the model, e.g. a paper layer scaled to its depth)."""
        return {o.name: options[o.name] if options.get(o.name) is not None else o.default for o in self.options}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """`options` as given (None: the default), or UsageError naming the first unknown name, wrong type or value."""
        for name, value in options.items():
            option = self.option(name)
            if option is None:
                known = ", ".join(o.name for o in self.options) or "none"
                raise UsageError(f"method {self.name} has no option {name!r}; its options: {known}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, option.type):
                raise UsageError(f"option {name} of {self.name} must be {option.type.__name__}, got {value!r}")
            if option.choices and value not in option.choices:
                choices = ", ".join(map(str, option.choices))
                raise UsageError(f"{self.name} {name} must be one of {choices}, got {value!r}")
        return dict(options)

    def parse_options(self, text: str) -> dict[str, Any]:
        """`order=spatial,matching=model` -> {"order": "spatial", "matching": "model"}, typed and checked. A value may
        hold commas (`layers=2,6,12`): a piece with no `=` continues the value before it."""
        pieces: list[list[str]] = []
        for piece in text.split(","):
            if "=" in piece or not pieces:
                name, sep, value = piece.partition("=")
                if not sep or not name.strip():
                    raise UsageError(f"method {self.name}: options are name=value, got {piece!r} in [{text}]")
                pieces.append([name.strip(), value.strip()])
            else:
                pieces[-1][1] += "," + piece.strip()
        options: dict[str, Any] = {}
        for name, value in pieces:
            option = self.option(name)
            if option is None:
                self.check_options({name: None})  # the one-line refusal naming the known options
            if name in options:
                raise UsageError(f"method {self.name}: option {name} given twice")
            try:
                options[name] = option.type(value)
            except ValueError:
                raise UsageError(
                    f"option {name} of {self.name} must be {option.type.__name__}, got {value!r}"
                ) from None
        return self.check_options(options)


def given(options: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """The options among `names` that were given (None or absent: the builder's default, the reference's way)."""
    return {name: options[name] for name in names if options.get(name) is not None}


__all__ = [
    "AFTER_LAYER",
    "BUDGET_LLM_INPUT",
    "CONVENTIONS",
    "ENCODER",
    "EVERY_FAMILY",
    "FIXED_COUNT",
    "INSIDE_LLM",
    "LAYER_MEAN",
    "LLAVA",
    "LLM_INPUT",
    "MethodSpec",
    "Option",
    "PAPER_DEPTH",
    "Parts",
    "given",
]
