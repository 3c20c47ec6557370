"""The method registry and specs: every entry resolves, each spec says what its method installs, options parse and
refuse in one line, and docs/reducers.md's table is the registry's."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testers import random_images, tiny_llava_config

from vistog_bench.errors import UsageError
from vistog_bench.model import build_inputs, llava_prompt
from vistog_bench.model.families import FAMILY_OBJECTS
from vistog_bench.reducers import applied_method, apply_method, remove_method, tokens_per_image
from vistog_bench.reducers.registry import (
    MethodChoice,
    method_names,
    methods_markdown,
    parse_method,
    spec,
    specs,
    split_methods,
)
from vistog_bench.reducers.spec import CONVENTIONS, ENCODER, EVERY_FAMILY, INSIDE_LLM, LLAVA, LLM_INPUT

REPO = Path(__file__).resolve().parents[1]
P = 576  # the tiny model's patches (CLIP-L/14 at 336 px)
# A budget and options each method runs at on the tiny model (a 2-layer LLM: a layer-mean budget needs >= 289 when
# the first stage keeps all P tokens, and FastV's K must be 1).
RUNS = {
    "none": (P, {}),
    "fastv": (64, {"fastv_layer": 1}),
    **{name: (300, {}) for name in ("dart", "pdrop", "sparsevlm")},
}


def run_of(name: str) -> tuple[int, dict]:
    return RUNS.get(name, (64, {}))


def test_every_entry_resolves_to_a_consistent_spec():
    others = {family.model_type for family in FAMILY_OBJECTS} - {LLAVA}  # the families beside LLaVA-1.5
    known_families = {LLAVA, *others}
    assert method_names() == tuple(method.name for method in specs())
    for method in specs():
        assert set(method.acts) <= {ENCODER, LLM_INPUT, INSIDE_LLM}, method.name
        assert method.budget_convention in CONVENTIONS, method.name
        assert method.families == EVERY_FAMILY or set(method.families) <= known_families, method.name
        if not isinstance(method.not_on_families, str):  # per family: a reason for each family it does not serve
            assert set(method.not_on_families) == others - set(method.families), method.name
        for option in method.options:
            assert option.type in (int, float, str), (method.name, option.name)
            if option.choices:
                assert option.choices[0] == option.default, (method.name, option.name)  # the default first
        assert method.build is not None or not method.acts, method.name
        assert (method.budget_convention == "layer_mean") == bool(method.paper_layers), method.name


def test_the_names_are_listed_without_importing_torch():
    """`vistog-bench run --help` lists the registry's names: that must not load torch (the CLI keeps --help fast)."""
    code = (
        "import sys; from vistog_bench.reducers.registry import method_names; "
        "assert len(method_names()) > 2; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", [n for n in method_names() if n != "vistog"])  # vistog: its checkpoint's tests
def test_spec_says_where_it_acts_and_how_the_prompt_counts(model, name):
    """`acts` against the parts the spec's builder installs; `prompt_tokens`, the convention and `training_free`
    against the AppliedMethod record of a real apply_method."""
    method = spec(name)
    budget, options = run_of(name)
    parts = method.build(model, budget, 0, options)
    stages = parts.pruner.stages if parts.pruner is not None else ()
    assert (ENCODER in method.acts) == (parts.reducer is not None or parts.merge is not None), name
    assert (LLM_INPUT in method.acts) == any(stage.layer == 0 for stage in stages), name
    assert (INSIDE_LLM in method.acts) == any(stage.layer > 0 for stage in stages), name
    apply_method(model, name, budget, **options)
    applied = applied_method(model)
    remove_method(model)
    expected = {"budget": budget, "P (all)": P, "P": P}.get(method.prompt_tokens)
    if expected is not None:
        assert applied.tokens_per_image == expected, name
    else:  # vscan's first stage: between the layer mean and P
        assert budget < applied.tokens_per_image < P, name
    assert applied.budget_convention == method.budget_convention
    assert applied.training_free == (name != "none")


DEFAULTS = [(m.name, o.name, o.default) for m in specs() for o in m.options if o.default is not None]


@pytest.fixture(scope="module")
def three_layer_model():
    """The tiny LLaVA with a 3-layer LLM: FastV's default K = 2 needs a layer after it."""
    from transformers import LlavaForConditionalGeneration

    from vistog_bench.model import VisToGForConditionalGeneration

    config = tiny_llava_config()
    config.text_config.num_hidden_layers = 3
    torch.manual_seed(0)
    stock = LlavaForConditionalGeneration(config).eval()
    return VisToGForConditionalGeneration.from_llava(stock, num_semantic_tokens=None).eval()


@pytest.mark.parametrize("name, option, default", DEFAULTS)
def test_an_option_given_its_declared_default_changes_nothing(
    model, three_layer_model, processor, name, option, default
):
    """The spec's `default` is what the method does without the option: the same logits, bit for bit."""
    budget, options = run_of(name)
    options = {key: value for key, value in options.items() if key != option}
    model = three_layer_model if option == "fastv_layer" else model
    images = [random_images(1, seed=3)]  # one sample of one image

    def logits(**extra):
        apply_method(model, name, budget, **options, **extra)
        inputs = build_inputs(processor, [llava_prompt("what is it ?")], images, tokens_per_image(model))
        with torch.no_grad():
            return model(**inputs).logits

    torch.testing.assert_close(logits(**{option: default}), logits(), rtol=0, atol=0)
    remove_method(model)


def test_method_text_parses_typed_and_prints_as_its_label():
    assert split_methods("tome[order=spatial,matching=model], pdrop[layers=2,6,12],fastv") == [
        "tome[order=spatial,matching=model]",
        "pdrop[layers=2,6,12]",
        "fastv",
    ]
    choice = parse_method("tome[order=spatial,matching=model]")
    assert choice == MethodChoice("tome", {"order": "spatial", "matching": "model"})
    assert parse_method("visionzip[with_cls=0]").options == {"with_cls": 0}  # typed by the spec: an int
    assert parse_method("vispruner[important_ratio=0.25]").options == {"important_ratio": 0.25}
    assert parse_method("pdrop[layers=2,6,12]").options == {"layers": "2,6,12"}
    assert parse_method(" FastV ") == MethodChoice("fastv")
    # the label lists options in the spec's order, whatever order they were given in, and reads back the same
    assert parse_method("tome[matching=model,order=spatial]").label == "tome[order=spatial,matching=model]"
    for method in specs():
        for option in method.options:
            value = option.choices[-1] if option.choices else {int: 1, float: 0.25, str: "1,2"}[option.type]
            choice = MethodChoice(method.name, {option.name: value})
            assert parse_method(choice.label) == choice, choice.label


@pytest.mark.parametrize(
    "text, message",
    [
        ("tomee", "did you mean 'tome'"),
        ("tome[ratio=2]", "no option 'ratio'; its options: order, matching"),
        ("pool[order=spatial]", "no option 'order'; its options: none"),
        ("visionzip[with_cls=yes]", "option with_cls of visionzip must be int, got 'yes'"),
        ("visionzip[with_cls=2]", "visionzip with_cls must be one of 1, 0, got 2"),
        ("tome[order=sorted]", "tome order must be one of reference, spatial"),
        ("tome[order]", "options are name=value"),
        ("tome[order=spatial", "one pair of brackets"),
        ("tome[]", "one pair of brackets"),
        ("tome[order=spatial,order=reference]", "option order given twice"),
    ],
)
def test_bad_method_text_is_one_line(text, message):
    with pytest.raises(UsageError, match=message) as error:
        parse_method(text)
    assert "\n" not in str(error.value)


def test_docs_methods_table_is_the_registry_s():
    page = (REPO / "docs" / "reducers.md").read_text()
    start = page.index("<!-- methods table")
    table = page[page.index("\n", start) + 1 : page.index("<!-- end of methods table -->")]
    assert table == methods_markdown(), "docs/reducers.md: paste `vistog-bench methods --markdown` between the markers"


def test_a_label_carries_its_options_into_the_model(model, processor):
    """`apply_method(model, "tome[order=spatial]", K)` is `apply_method(model, "tome", K, order="spatial")`: the same
    record and the same logits; the record's label and settings say what ran."""
    images = [random_images(1, seed=4)]

    def logits(method, **options):
        apply_method(model, method, 64, **options)
        inputs = build_inputs(processor, [llava_prompt("what is it ?")], images, tokens_per_image(model))
        with torch.no_grad():
            return model(**inputs).logits, applied_method(model)

    by_label, applied = logits("tome[order=spatial]")
    by_keyword, keyword_applied = logits("tome", order="spatial")
    torch.testing.assert_close(by_label, by_keyword, rtol=0, atol=0)
    assert applied == keyword_applied and applied.options == {"order": "spatial"}
    assert applied.label == "tome[order=spatial]"
    assert applied.settings == {"order": "spatial", "matching": "float32"}  # the default named beside the option
    with pytest.raises(UsageError, match="option order given twice"):
        apply_method(model, "tome[order=spatial]", 64, order="reference")
    assert applied_method(model) == applied  # a refused call changes nothing
    remove_method(model)


def test_options_on_another_family_are_refused_before_loading():
    """A family runs its methods at the LLM input with reducers/families.py's settings: options are LLaVA-1.5's."""
    from vistog_bench.model.presets import FAMILY_PRESETS, family_preset_config
    from vistog_bench.reducers import config_problem

    config = next(c for c in map(family_preset_config, FAMILY_PRESETS) if c.model_type == "qwen2_5_vl")
    assert config_problem(config, "vispruner", budget=25) is None
    problem = config_problem(config, "vispruner[ties=stable]", budget=25)
    assert problem.startswith("vispruner on qwen2_5_vl: its options (ties) apply on LLaVA-1.5")
    assert config_problem(config, "tome[order=spatial]", budget=25).startswith("tome on qwen2_5_vl: merges inside")


def test_methods_command(capsys):
    from vistog_bench.cli import main

    assert main(["methods"]) == 0
    table = capsys.readouterr().out
    assert all(f"\n{name} " in table for name in method_names())
    assert main(["methods", "pdrop"]) == 0
    detail = capsys.readouterr().out
    assert detail.startswith("pdrop: ") and "option layers (str" in detail and "paper layers" in detail
    assert main(["methods", "--markdown"]) == 0
    assert capsys.readouterr().out == methods_markdown()
    assert main(["methods", "tomee"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method 'tomee' (did you mean 'tome'?)" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):  # argparse prints the help and exits
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in method_names()) and "'tome[order=spatial]'" in help_text


def test_model_and_profiling_import_nothing_from_reducers():
    """The import direction docs/architecture.md states: reducers/ reads model/, never the reverse, and the profiler
    learns a method's facts from its AppliedMethod record."""
    import ast

    package = REPO / "vistog_bench"
    offenders = []
    for path in [*(package / "model").rglob("*.py"), *(package / "profiling").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            if any("reducers" in name.split(".") for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders


def test_the_report_s_conventions_are_the_specs():
    """report/ imports no reducers (docs/architecture.md): its copies of the convention names must stay equal."""
    from vistog_bench.report.reference import CONVENTIONS as REFERENCE_CONVENTIONS
    from vistog_bench.report.tables import BUDGET_CONVENTIONS

    assert set(REFERENCE_CONVENTIONS) == set(CONVENTIONS)
    assert set(BUDGET_CONVENTIONS) < set(CONVENTIONS)  # every convention but the LLM input's is explained
