"""`--sbatch-args "..."`: the sbatch options a user adds to every job of a Slurm node.

The string is split like a shell would (shlex) and checked option by option, so that a user
cannot take over what dirt sets itself (the job's name, output file, time limit, partition,
`--parsable` output it reads) or break the one-task-one-job contract (arrays, held jobs,
requeueing with a spent token, `--wait`). Anything else is passed to sbatch unchanged, which
is the judge of what it means; `slurm.check_submit` asks it without submitting.

sbatch parses options with getopt_long, which accepts any unambiguous prefix of a long option
(`--out=x` is `--output=x`) and bundled short options (`-vo x`): both are understood here.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence

from dirt.errors import InputError
from dirt.requires import parse_all

# Long options that dirt sets, or that break one task = one job, with why.
RESERVED_LONG = {
    "job-name": "dirt names each job after its task",
    "output": "dirt sets the job's output file",
    "error": "the job's stderr goes to dirt's output file",
    "open-mode": "dirt sets the job's output file",
    "time": "dirt sets the time limit from the task's timeout",
    "partition": "the node names the partition (slurm:PARTITION)",
    "clusters": "a Slurm node is one cluster; add another node for another cluster",
    "parsable": "dirt sets it to read the job id",
    "wrap": "dirt writes the job script",
    "array": "each task is one job",
    "wait": "dirt tracks jobs itself; --wait would block the dispatcher",
    "test-only": "dirt must really submit",
    "hold": "a held job never runs",
    "requeue": "dirt retries a lost task itself, as a new attempt with a new token",
    "help": "it prints help instead of submitting",
    "usage": "it prints help instead of submitting",
    "version": "it prints the version instead of submitting",
}
RESERVED_SHORT = {
    "J": "job-name",
    "o": "output",
    "e": "error",
    "t": "time",
    "p": "partition",
    "M": "clusters",
    "a": "array",
    "W": "wait",
    "H": "hold",
    "h": "help",
    "V": "version",
}

# sbatch 22.05's long options that need a value (`--mem 4G` as well as `--mem=4G`).
_LONG_WITH_VALUE = """
    account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment
    constraint container core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task
    deadline delay-boot dependency distribution error export export-file extra-node-info gid
    gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint
    input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind
    mem-per-cpu mem-per-gpu mincpus network nodefile nodelist nodes ntasks ntasks-per-core
    ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode output partition power prefer
    priority profile qos reservation signal sockets-per-node switches thread-spec
    threads-per-core time time-min tmp uid wait-all-nodes wckey wrap exclude"""
LONG_WITH_VALUE = frozenset(_LONG_WITH_VALUE.split())
# Short options that take a value (the rest of the word, or the next word).
SHORT_WITH_VALUE = frozenset("ABCDFGJLMNSabcdeimnopqtwx")


def parse_sbatch_args(text: str) -> tuple[str, ...]:
    """Split and check `--sbatch-args`; return the words for sbatch, or raise InputError."""
    if not isinstance(text, str):
        raise InputError(f"--sbatch-args must be a string, got {type(text).__name__}")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InputError(f"--sbatch-args {text!r} does not split like a shell line: {exc}") from exc
    problems: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word.startswith("--") and len(word) > 2:
            name, has_value, _ = word[2:].partition("=")
            problems.extend(_check_long(name))
            if not has_value and name in LONG_WITH_VALUE:
                index += 1  # its value is the next word
        elif word.startswith("-") and len(word) > 1 and word != "--":
            takes_next, found = _check_short(word)
            problems.extend(found)
            index += takes_next
        else:
            problems.append(
                f"{word!r} is not an sbatch option: --sbatch-args takes options only "
                "(dirt writes the job script)"
            )
    if index > len(words):
        problems.append(f"{words[-1]!r} needs a value")
    if problems:
        raise InputError(f"--sbatch-args {text!r}: " + "; ".join(problems))
    return tuple(words)


def _check_long(name: str) -> list[str]:
    if not name:
        return ["an option has no name"]
    if name in RESERVED_LONG:
        return [f"--{name} is dirt's to set ({RESERVED_LONG[name]})"]
    if name in LONG_WITH_VALUE:
        return []
    # getopt_long takes an unambiguous prefix for the whole name: `--out` is `--output`.
    meant = sorted(full for full in RESERVED_LONG if full.startswith(name))
    if meant:
        spelled = " or ".join(f"--{m}" for m in meant)
        return [f"--{name} would be read as {spelled}, which is dirt's to set"]
    return []


def _check_short(word: str) -> tuple[int, list[str]]:
    """Problems of a bundle like `-vN2`; and 1 when the next word is its value."""
    letters = word[1:]
    for position, letter in enumerate(letters):
        if letter in RESERVED_SHORT:
            long = RESERVED_SHORT[letter]
            return 0, [f"-{letter} (--{long}) is dirt's to set ({RESERVED_LONG[long]})"]
        if letter in SHORT_WITH_VALUE:
            return (1 if position == len(letters) - 1 else 0), []
    return 0, []


# ---- a task's features ---------------------------------------------------------------------

# A Slurm feature name as `--constraint` reads it (no operators: & | , * [ ] ( ) !).
FEATURE = re.compile(r"[A-Za-z0-9_.:+/-]{1,200}")


def required_features(requires: Iterable[str]) -> list[str]:
    """The Slurm features a task's `requires` names: each `FEATURE in features`.

    A partition's `features` are the union over its nodes, so a task routed to it by such a
    requirement must ask Slurm for a node that has the feature. `not_in` has no counterpart
    in Slurm 22.05's constraint language; other keys (gres, cpu_count, ...) are not features.
    """
    found: list[str] = []
    for requirement in parse_all(requires):
        value = requirement.value
        named = requirement.key == "features" and requirement.op == "in"
        if named and FEATURE.fullmatch(value) and value not in found:
            found.append(value)
    return found


def with_features(args: Sequence[str], features: Sequence[str]) -> tuple[str, ...]:
    """`args` (from parse_sbatch_args) asking also for every one of `features`: one
    `--constraint`, the user's own (from --sbatch-args) ANDed with them, since sbatch keeps
    only the last --constraint it is given."""
    if not features:
        return tuple(args)
    kept: list[str] = []
    own: list[str] = []
    words = list(args)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        name, has_value, value = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        if len(name) >= 4 and "constraint".startswith(name):
            if not has_value and index < len(words):
                value, index = words[index], index + 1
            own.append(value)
        elif word.startswith("-C") and not word.startswith("--"):
            if word == "-C" and index < len(words):
                own.append(words[index])
                index += 1
            else:
                own.append(word[2:])
        else:
            kept.append(word)
    terms = [f"({c})" if any(op in c for op in "|,[") else c for c in own if c]
    return (*kept, "--constraint=" + "&".join([*terms, *features]))
