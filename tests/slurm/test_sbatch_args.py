"""--sbatch-args and the small parsers of Slurm's output: pure functions, no cluster."""

from __future__ import annotations

import pytest

from dirt.batch.sbatch_args import parse_sbatch_args, required_features, with_features
from dirt.batch.slurm import GONE, JobPhase, JobStatus, parse_duration, parse_scontrol, slurm_time
from dirt.errors import InputError


def test_options_pass_through_split_like_a_shell_line() -> None:
    text = "--mem=4G -c 2 --constraint 'avx2&skylake' --exclusive --export=NONE -N1 --qos long"
    assert parse_sbatch_args(text) == (
        "--mem=4G",
        "-c",
        "2",
        "--constraint",
        "avx2&skylake",
        "--exclusive",
        "--export=NONE",
        "-N1",
        "--qos",
        "long",
    )


def test_an_empty_string_is_no_options() -> None:
    assert parse_sbatch_args("  ") == ()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("--time=5", "--time"),
        ("--time 5", "--time"),
        ("-t 5", "-t (--time)"),
        ("-t5", "-t (--time)"),
        ("--output=/tmp/x", "--output"),
        ("-o /tmp/x", "-o (--output)"),
        ("--job-name=x", "--job-name"),
        ("-vJ x", "-J (--job-name)"),
        ("--parsable", "--parsable"),
        ("--partition=gpu", "--partition"),
        ("--array=1-10", "--array"),
        ("--requeue", "--requeue"),
        ("--hold", "--hold"),
        ("--wrap='echo hi'", "--wrap"),
        ("--error=e.txt", "--error"),
        ("--out=x", "--out would be read as --output"),
        ("--par", "--par would be read as --parsable or --partition"),
    ],
)
def test_an_option_dirt_sets_is_refused_by_name(text: str, named: str) -> None:
    with pytest.raises(InputError, match="dirt's to set") as refused:
        parse_sbatch_args(text)
    assert named in str(refused.value)


def test_a_similar_option_that_is_not_dirts_passes() -> None:
    assert parse_sbatch_args("--time-min=10 --no-requeue --no-kill") == (
        "--time-min=10",
        "--no-requeue",
        "--no-kill",
    )


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InputError) as refused:
        parse_sbatch_args("--time=5 job.sh --output x")
    message = str(refused.value)
    assert "--time" in message and "'job.sh' is not an sbatch option" in message
    assert "--output" in message


def test_a_value_that_looks_like_an_option_belongs_to_its_option() -> None:
    assert parse_sbatch_args("--comment --time") == ("--comment", "--time")


@pytest.mark.parametrize("text", ["'unbalanced", "--mem", "-c"])
def test_malformed_args_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="--sbatch-args"):
        parse_sbatch_args(text)


@pytest.mark.parametrize(
    ("seconds", "minutes"), [(1, "1"), (59.5, "1"), (60, "1"), (61, "2"), (3600, "60")]
)
def test_a_timeout_becomes_whole_minutes_rounded_up(seconds: float, minutes: str) -> None:
    assert slurm_time(seconds) == minutes


def test_a_time_limit_must_be_positive() -> None:
    with pytest.raises(InputError, match="positive"):
        slurm_time(0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("UNLIMITED", None),
        ("NONE", None),
        ("5", 300),
        ("30:00", 1800),
        ("01:00:00", 3600),
        ("1-00:00:00", 86400),
        ("2-12", 2 * 86400 + 12 * 3600),
        ("1-02:03", 86400 + 2 * 3600 + 3 * 60),
    ],
)
def test_slurm_durations_parse_to_seconds(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


def test_scontrol_values_may_hold_spaces() -> None:
    line = "NodeName=vm Arch=x86_64 OS=Linux 6.1.0 #1 SMP PREEMPT  RealMemory=24105 Reason=a b"
    assert parse_scontrol(line) == [
        {
            "NodeName": "vm",
            "Arch": "x86_64",
            "OS": "Linux 6.1.0 #1 SMP PREEMPT",
            "RealMemory": "24105",
            "Reason": "a b",
        }
    ]


def test_job_states_map_to_phases_and_words() -> None:
    assert JobStatus("1", "PENDING", "Priority").describe() == "PENDING: Priority"
    assert JobStatus("1", "PENDING", "Priority").phase is JobPhase.QUEUED
    assert JobStatus("1", "COMPLETING").phase is JobPhase.RUNNING
    assert JobStatus("1", "FAILED", "NonZeroExitCode", exit_code=3).describe() == (
        "FAILED: exit code 3"
    )
    assert JobStatus("1", "CANCELLED", "Resources").describe() == "CANCELLED"
    assert JobStatus("1", "OUT_OF_MEMORY").phase is JobPhase.ENDED
    assert JobStatus("1", GONE).phase is JobPhase.GONE
    # A state a newer Slurm invents is not taken for an end: nothing is lost on a guess.
    assert JobStatus("1", "SOMETHING_NEW").phase is JobPhase.RUNNING


def test_features_a_task_requires_are_those_named_in_features() -> None:
    requires = ["avx512 in features", "cpu_count is 2", "gpu in gres", "old not_in features"]
    assert required_features([*requires, "avx512 in features", "ib in features"]) == [
        "avx512",
        "ib",
    ]


def test_a_name_slurm_would_read_as_an_operator_is_no_feature() -> None:
    assert required_features(["a|b in features", "x&y in features"]) == []


def test_features_become_one_constraint_after_the_users_options() -> None:
    assert with_features(("--mem=4G",), ["avx512", "ib"]) == (
        "--mem=4G",
        "--constraint=avx512&ib",
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--constraint=skylake|icelake", "--mem=1G"),
        ("--constraint", "skylake|icelake", "--mem=1G"),
        ("--constr=skylake|icelake", "--mem=1G"),
        ("-C", "skylake|icelake", "--mem=1G"),
        ("-Cskylake|icelake", "--mem=1G"),
    ],
)
def test_the_users_own_constraint_is_anded_with_the_features(args: tuple[str, ...]) -> None:
    assert with_features(args, ["ib"]) == ("--mem=1G", "--constraint=(skylake|icelake)&ib")


def test_no_features_leave_the_options_as_they_are() -> None:
    assert with_features(("-C", "a|b"), []) == ("-C", "a|b")
