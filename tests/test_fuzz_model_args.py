"""Fuzzing `--model_args` of `lm_eval --model sparse-hf`: generated `key=value,...` strings through lm-eval's own
parser (`create_from_arg_string`, which casts "0.5" to a float) into SparseHFLM. The model path does not
exist, so a case whose arguments all parse stops at the model with that UserError: every case must end in a
UserError (one line, exit status 2 in lm_eval), never another exception, within the per-case deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzing import mutated
from hypothesis import given
from hypothesis import strategies as st

from sparse_bench.harness_ext.errors import UserError

KEYS = ["method", "sparsity", "structure", "scope", "recipe", "calibration", "nsamples", "seqlen", "seed",
        "true_sequential", "dtype"]
RECIPE = Path(__file__).parent / "data" / "recipes" / "llmc_wanda_2of4.yaml"
VALUES = st.one_of(
    st.sampled_from(["magnitude", "wanda", "sparsegpt", "global", "layer", "2:4", "4:8", "0:0", "unstructured",
                     "0.5", "1", "0", "-1", "1.5", "1e400", "nan", "inf", "true", "false", "yes", "auto", "float16",
                     "c4", "wikitext2", "128", "128.0", "abc", "", str(RECIPE), "/no/such/recipe.yaml"]),
    st.integers(-10**12, 10**12).map(str), st.floats().map(str),
    st.text(st.characters(blacklist_characters=",=", blacklist_categories=("Cs",)), max_size=10))
MISSING_MODEL = "/no/such/model"


@st.composite
def model_args(draw) -> str:
    pairs = draw(st.lists(st.tuples(st.sampled_from([*KEYS, "unknown_key"]), VALUES), max_size=6,
                          unique_by=lambda pair: pair[0]))
    return ",".join([f"pretrained={MISSING_MODEL}", *(f"{key}={value}" for key, value in pairs)])


@pytest.fixture(scope="module")
def sparse_hf():
    from lm_eval.api.registry import get_model

    from sparse_bench.model_wrappers.registration import register_with_lm_eval

    register_with_lm_eval()
    return get_model("sparse-hf")


def assert_user_error(model_class, arg_string: str) -> None:
    with pytest.raises(UserError) as error:
        model_class.create_from_arg_string(arg_string, {})
    assert "\n" not in str(error.value)


@given(arg_string=model_args())
def test_generated_model_args(sparse_hf, arg_string):
    assert_user_error(sparse_hf, arg_string)


@given(arg_string=mutated([f"pretrained={MISSING_MODEL},method=wanda,sparsity=0.5,nsamples=16,seqlen=64".encode(),
                           f"pretrained={MISSING_MODEL},recipe={RECIPE},seed=3,true_sequential=true".encode()],
                          fragments=["=", ",", "0.5", "2:4", "\x00", "nan", "1e400"]))
def test_mutated_model_args(sparse_hf, arg_string):
    text = arg_string.decode("utf-8", "replace")
    pairs = [item.split("=", 1) for item in text.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        return  # not `key=value` pairs: lm-eval's own parser refuses those
    if dict(pairs).get("pretrained", MISSING_MODEL) != MISSING_MODEL:
        return  # the model name itself was changed: a hub id would be looked up
    assert_user_error(sparse_hf, text)


@pytest.mark.parametrize(("arg_string", "message"), [
    ("pretraind={model}", "model_args has no pretrained=MODEL"),
    ("pretrained={model},sparsty=0.5", "model_args: 'sparsty' is an option of neither"),
    ("pretrained={model},method=wanda,sparsity=0.5,nsamples=abc", "nsamples must be a whole number, got 'abc'"),
    ("pretrained={model},method=wanda,sparsity=0.5,seqlen=64.5", "seqlen must be a whole number, got 64.5"),
    ("pretrained={model},recipe=0.5", "cannot read recipe 0.5"),
    ("pretrained={model},recipe=a\x00b", "cannot read recipe a.b: embedded null byte"),
])
def test_found_by_fuzzing(sparse_hf, tiny_llama, arg_string, message):
    """Misspelt keys and non-integer counts were tracebacks (TypeError, ValueError) or silently truncated."""
    with pytest.raises(UserError, match=message):
        sparse_hf.create_from_arg_string(arg_string.format(model=tiny_llama), {"device": "cpu"})
