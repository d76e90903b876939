"""The requirements language: four operators against a node's sys_info, never evaluated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dirt import requires
from dirt.errors import RequirementError

NODE: dict[str, Any] = {
    "architecture": "x86_64",
    "platform": "linux",
    "cpu_count": 8,
    "environ": {"G4INSTALL": "/opt/geant4", "HOME": "/root"},
    "path": ["/usr/local/bin", "/usr/bin", "/bin"],
    "version_info": [3, 11, 7, "final", 0],
    "hostname": "build1",
    "debug": False,
}


def meets(text: str, info: dict[str, Any] = NODE) -> bool:
    return requires.parse(text).matches(info)


# ---- the four operators ---------------------------------------------------------------------


def test_is_matches_an_equal_value() -> None:
    assert meets("architecture is x86_64")
    assert not meets("architecture is arm64")


def test_is_compares_numbers_and_booleans_by_their_text() -> None:
    assert meets("cpu_count is 8")
    assert meets("debug is false")


def test_is_never_matches_a_missing_key() -> None:
    assert not meets("gpu is none")


def test_not_matches_a_different_or_missing_value() -> None:
    assert meets("architecture not arm64")
    assert not meets("architecture not x86_64")
    assert meets("gpu not nvidia")


def test_in_finds_a_key_of_a_mapping() -> None:
    assert meets("G4INSTALL in environ")
    assert not meets("CUDA_HOME in environ")


def test_in_finds_an_item_of_a_list() -> None:
    assert meets("/usr/bin in path")
    assert not meets("/usr in path"), "an item, not a prefix of one"


def test_in_finds_a_substring_of_a_string() -> None:
    assert meets("build in hostname")


def test_not_in_is_the_opposite_of_in() -> None:
    assert meets("CUDA_HOME not_in environ")
    assert not meets("G4INSTALL not_in environ")
    assert meets("/opt/bin not_in path")


def test_not_in_may_be_written_as_two_words() -> None:
    assert requires.parse("CUDA_HOME not in environ").op == "not_in"


def test_in_on_a_missing_key_is_false_and_not_in_true() -> None:
    assert not meets("x in nothing_here")
    assert meets("x not_in nothing_here")


def test_dots_step_into_nested_entries() -> None:
    assert meets("version_info.0 is 3")
    assert meets("environ.HOME is /root")
    assert not meets("version_info.9 is 3")


def test_values_may_hold_spaces() -> None:
    info = {**NODE, "cpu_model": "AMD EPYC 7B13"}
    assert meets("cpu_model is AMD EPYC 7B13", info)


# ---- rejection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "architecture", "architecture x86_64", "is x86_64", "architecture equals x86_64"]
)
def test_an_expression_that_does_not_parse_is_rejected_by_name(text: str) -> None:
    with pytest.raises(RequirementError, match="does not parse") as caught:
        requires.parse(text)
    assert repr(text) in str(caught.value)


def test_an_unknown_operator_is_named() -> None:
    with pytest.raises(RequirementError, match="'equals' is not an operator"):
        requires.parse("architecture equals x86_64")


def test_code_is_never_evaluated() -> None:
    hostile = "__import__('os').system('false') is 0"
    assert not meets(hostile)
    assert not meets("__class__ is dict")


# ---- platform -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "node", "ok"),
    [
        ("linux", "linux", True),
        ("osx", "darwin", True),
        ("darwin", "darwin", True),
        ("windows", "win32", True),
        ("linux", "darwin", False),
        ("windows", "linux", False),
    ],
)
def test_a_task_platform_must_match_the_node_system(wanted: str, node: str, ok: bool) -> None:
    assert requires.platform_matches(wanted, {"platform": node}) is ok


def test_no_platform_matches_any_node() -> None:
    assert requires.platform_matches(None, {"platform": "win32"})


# ---- properties -----------------------------------------------------------------------------

WORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=12
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.text(max_size=80))
def test_no_text_crashes_the_parser(text: str) -> None:
    try:
        requirement = requires.parse(text)
    except RequirementError:
        return
    assert requirement.op in requires.OPERATORS


@given(st.one_of(st.none(), st.integers(), st.lists(st.text()), st.binary()))
def test_a_non_string_is_rejected_not_crashed_on(value: Any) -> None:
    with pytest.raises(RequirementError):
        requires.parse(value)


@given(st.text(max_size=80), st.dictionaries(st.text(max_size=8), JSONISH, max_size=6))
def test_matching_any_sys_info_never_crashes(text: str, info: dict[str, Any]) -> None:
    try:
        requirement = requires.parse(text)
    except RequirementError:
        return
    assert isinstance(requirement.matches(info), bool)


@given(WORDS, WORDS, st.dictionaries(st.text(max_size=8), JSONISH, max_size=6))
def test_not_is_the_negation_of_is(key: str, value: str, info: dict[str, Any]) -> None:
    if value in requires.OPERATORS or key in requires.OPERATORS:
        return
    is_ = requires.parse(f"{key} is {value}").matches(info)
    assert requires.parse(f"{key} not {value}").matches(info) is (not is_)


@given(WORDS, WORDS, st.dictionaries(st.text(max_size=8), JSONISH, max_size=6))
def test_not_in_is_the_negation_of_in(value: str, key: str, info: dict[str, Any]) -> None:
    if {value, key} & {*requires.OPERATORS}:
        return
    in_ = requires.parse(f"{value} in {key}").matches(info)
    assert requires.parse(f"{value} not_in {key}").matches(info) is (not in_)


@given(WORDS, WORDS)
def test_is_finds_the_value_it_was_given(key: str, value: str) -> None:
    if {key, value} & {*requires.OPERATORS} or "." in key:
        return
    assert requires.parse(f"{key} is {value}").matches({key: value})
