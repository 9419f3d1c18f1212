"""lldd_core.ranges: one declaration per numeric setting, and the LLDD_* environment helper (lldd_core.env)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from lldd_core import ranges as R
from lldd_core.env import env_folder, env_number, env_text
from lldd_core.errors import InputError

ALL = [v for v in vars(R).values() if isinstance(v, R.Range)] + list(R.SIZES)


def test_every_range_describes_itself_and_refuses_in_one_line():
    assert len(ALL) >= 25
    for rng in ALL:
        words = rng.describe()
        assert words.startswith(("a ", "an ")) and "\n" not in words, (rng.key, words)
        message = str(rng.refusal("garbage"))
        assert "\n" not in message and rng.option in message and words in message and "'garbage'" in message


@pytest.mark.parametrize("rng, words", [
    (R.ORDER, "an integer from 1 to the hidden size"),
    (R.EPS, "a number in (0, 10]"),
    (R.TOL, "a number in (0, 1)"),
    (R.TOP_P, "a number in (0, 1]"),
    (R.R, "a number in [1e-06, 1000000]"),
    (R.TARGET, "a non-zero number in [-10000, 10000]"),
    (R.SEED, "an integer from 0 to 4294967295"),
    (R.STEER_LAYER, "an integer from 0 to the number of layers - 1"),
])
def test_describe(rng, words):
    assert rng.describe() == words


def test_model_bounds_are_named_and_numbered():
    assert R.ORDER.describe(hi=32) == "an integer from 1 to the hidden size 32"
    assert R.STEER_LAYER.describe(hi=4) == "an integer from 0 to the number of layers - 1 (3)"
    with pytest.raises(InputError, match=r"^The reduced order d \(--order\) must be an integer from 1 to the hidden "
                                         r"size 32; got 33\.$"):
        R.ORDER.check(33, hi=32)
    assert R.ORDER.check(32, hi=32) == 32 and R.ORDER.check(10_000) == 10_000  # no model: no upper bound yet
    assert R.STEER_LAYER.check(3, hi=4) == 3
    with pytest.raises(InputError, match="got 4"):
        R.STEER_LAYER.check(4, hi=4)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3", None, float("nan"), [3], 2**40])
def test_integers_refuse_what_is_not_one_in_range(value):
    with pytest.raises(InputError, match=r"--order\) must be an integer"):
        R.ORDER.check(value, hi=2**32)


def test_integers_accept_integral_numbers_of_any_type():
    assert R.ORDER.check(3.0, hi=8) == 3 and isinstance(R.ORDER.check(3.0, hi=8), int)
    assert R.ORDER.check(np.int64(5), hi=8) == 5 and isinstance(R.ORDER.check(np.int64(5), hi=8), int)


@pytest.mark.parametrize("value", [0.0, -0.1, 10.0001, float("nan"), float("inf"), -math.inf, "0.1", False])
def test_floats_refuse_non_finite_and_out_of_range(value):
    with pytest.raises(InputError, match="ε"):
        R.EPS.check(value)


def test_open_and_closed_bounds_and_nonzero():
    assert R.EPS.check(10) == 10.0 and isinstance(R.EPS.check(10), float)
    assert R.Q.check(0) == 0.0  # closed at 0
    with pytest.raises(InputError):
        R.TOL.check(1.0)  # open at 1
    with pytest.raises(InputError, match="non-zero"):
        R.TARGET.check(0.0)
    assert R.DY.check(0.0) == 0.0  # Δy = 0 steers nothing: a legitimate check
    assert R.STRENGTH.check_optional(None) is None


@pytest.mark.parametrize("text", ["", "  ", "abc", "1e3", "1.5", "0x10", "9" * 5000, "-0", "nan"])
def test_parse_refuses_text_that_is_not_an_integer_in_range(text):
    with pytest.raises(InputError, match=r"--order"):
        R.ORDER.parse(text, hi=64)


def test_parse_reads_numbers_with_blanks():
    assert R.ORDER.parse(" 8 ") == 8
    assert R.EPS.parse("1e-1") == pytest.approx(0.1)
    with pytest.raises(InputError, match="got 'inf'"):
        R.EPS.parse("inf")


def test_argtype_is_an_argparse_type_that_states_the_range():
    parse = R.TOP_P.argtype()
    assert parse("0.5") == 0.5 and parse.range is R.TOP_P
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a number in \(0, 1\]; got '0'$"):
        parse("0")
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--top-p", type=parse)
    with pytest.raises(argparse.ArgumentError, match="must be a number in"):
        parser.parse_args(["--top-p", "nan"])


def test_widget_bounds_follow_the_range():
    assert R.ORDER.widget(hi=32) == {"min_value": 1, "max_value": 32}
    assert R.EPS.widget() == {"min_value": 1e-4, "max_value": 10.0}  # open at 0: the nearest offered value
    assert R.TOL.widget() == {"min_value": 1e-4, "max_value": 0.5}
    assert R.STEER_LAYER.widget(hi=4) == {"min_value": 0, "max_value": 3}
    assert R.STRENGTH.widget() == {"min_value": -1e4, "max_value": 1e4}
    for rng in ALL:  # every offered value is accepted
        bounds = rng.widget(hi=64)
        for value in bounds.values():
            if value is not None:
                assert rng.check(value, hi=64) == value


def test_lists():
    assert R.parse_list("0.5, 1,2", R.TARGET) == [0.5, 1.0, 2.0]
    for text, match in [("", "takes comma-separated"), ("1,,2", "empty entry"), ("1,nan", "got 'nan'"),
                        (",".join(["1"] * 40), "at most 16"), ("1,0", "non-zero")]:
        with pytest.raises(InputError, match=match):
            R.parse_list(text, R.TARGET, max_len=R.MAX_TARGETS)
    assert R.check_list((1, 2.0), R.TARGET) == [1.0, 2.0]
    for values in ([], "1,2", None, [float("inf")]):
        with pytest.raises(InputError, match="target"):
            R.check_list(values, R.TARGET)
    parse = R.list_argtype(R.STEER_LAYERS)
    assert parse("0,3") == [0, 3]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated numbers, each an integer from 0"):
        parse("1,-1")


@pytest.mark.parametrize("text", ["a,b,c", "1,2", "-1,2,3", "0,0,0", "1,1,1", "6,4", "6,4,3,2", "6,,3", "6,4,3.5",
                                  "6,4,300000"])
def test_sizes_refuse_garbage(text):
    with pytest.raises(InputError, match="sizes"):
        R.parse_sizes(text)
    with pytest.raises(argparse.ArgumentTypeError, match="three comma-separated integers"):
        R.sizes_argtype(text)


def test_sizes_accept_and_check():
    assert R.parse_sizes(" 6, 4 ,3") == (6, 4, 3)
    assert R.check_sizes([6, 4, 3]) == (6, 4, 3)
    for sizes in ((6, 4), (6, 0, 3), "6,4,3", (6, 4, float("nan"))):
        with pytest.raises(InputError):
            R.check_sizes(sizes)


def test_the_limits_agree_with_the_modules_that_enforce_them():
    from lldd_core.concepts.data import MIN_PER_SPLIT
    from lldd_core.concepts.files import MAX_ROWS

    assert R.MAX_EXAMPLES == MAX_ROWS
    assert [rng.lo for rng in R.SIZES] == [MIN_PER_SPLIT[k] for k in ("concept", "operating", "evaluation")]


def test_lambda_ranges_per_method():
    assert R.lam_range("jacobian", "blend") is R.LAM_BLEND and R.LAM_BLEND.describe() == "a number in [0, 1]"
    assert R.lam_range("jacobian", "additive") is R.LAM_ADDITIVE
    assert R.lam_range("jacobian", "reference") is R.LAM_ADDITIVE
    assert R.lam_range("lqr") is R.LAM_LQR
    with pytest.raises(InputError, match="blend"):
        R.LAM_BLEND.check(1.5)


# --- LLDD_* environment settings --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["lots", "nan", "inf", "-1", "0", "1e9", "8 GB"])
def test_env_number_refuses_garbage_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", text)
    with pytest.raises(InputError) as err:
        env_number("LLDD_MAX_JACOBIAN_GB", R.MAX_JACOBIAN_GB, 8)
    message = str(err.value)
    assert message.startswith("LLDD_MAX_JACOBIAN_GB=") and "(0, 1000000]" in message and "\n" not in message


def test_env_number_defaults_and_parses(monkeypatch):
    monkeypatch.delenv("LLDD_MAX_JACOBIAN_GB", raising=False)
    assert env_number("LLDD_MAX_JACOBIAN_GB", R.MAX_JACOBIAN_GB, 8) == 8
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "  ")
    assert env_number("LLDD_MAX_JACOBIAN_GB", R.MAX_JACOBIAN_GB, 8) == 8
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", " 0.5 ")
    assert env_number("LLDD_MAX_JACOBIAN_GB", R.MAX_JACOBIAN_GB, 8) == 0.5


def test_env_folder_and_text(monkeypatch, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    monkeypatch.setenv("LLDD_DEMO_DIR", str(afile))
    with pytest.raises(InputError, match="LLDD_DEMO_DIR=.* is not a folder"):
        env_folder("LLDD_DEMO_DIR", tmp_path)
    monkeypatch.setenv("LLDD_DEMO_DIR", str(tmp_path / "new"))
    assert env_folder("LLDD_DEMO_DIR", tmp_path) == tmp_path / "new"  # created when first written
    monkeypatch.setenv("LLDD_DEMO_DIR", "")
    assert env_folder("LLDD_DEMO_DIR", tmp_path) == tmp_path
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", "   ")
    assert env_text("LLDD_DEFAULT_MODEL", "demo:gpt2-small") == "demo:gpt2-small"
