"""What reads may show of a node's sys_info: names of environment variables, masked secrets."""

from __future__ import annotations

from dirt.redact import MASK, mask_text, masked, shown_environ, shown_sys_info

DEFAULT_SHOWN = ["PATH", "PYTHONPATH", "HOME", "SHELL", "LANG"]


def test_environment_values_are_hidden_except_the_names_shown() -> None:
    shown = shown_environ(
        {"PATH": "/usr/bin", "HOME": "/root", "MYSECRET": "hunter2", "G4INSTALL": "/opt/g4"},
        DEFAULT_SHOWN,
    )
    assert shown == {"PATH": "/usr/bin", "HOME": "/root", "MYSECRET": MASK, "G4INSTALL": MASK}


def test_shown_names_take_shell_wildcards() -> None:
    shown = shown_environ({"CONDA_PREFIX": "/opt/conda", "CONDA_TOKEN": "x"}, ["CONDA_PREFIX*"])
    assert shown == {"CONDA_PREFIX": "/opt/conda", "CONDA_TOKEN": MASK}


def test_a_shown_value_still_has_its_url_password_masked() -> None:
    shown = shown_environ({"HTTP_PROXY": "http://me:pw@proxy:3128"}, ["HTTP_PROXY"])
    assert shown == {"HTTP_PROXY": f"http://me:{MASK}@proxy:3128"}


def test_url_passwords_are_masked_and_the_rest_kept() -> None:
    assert mask_text("postgresql://app:s3cret@db/prod") == f"postgresql://app:{MASK}@db/prod"
    assert mask_text("clone https://ghp_abc@github.com/o/r.git") == (
        f"clone https://{MASK}@github.com/o/r.git"
    )
    assert mask_text("ssh://git@example.org/repo") == "ssh://git@example.org/repo"
    assert mask_text("https://example.org/a?b=c") == "https://example.org/a?b=c"


def test_command_line_secrets_are_masked() -> None:
    assert mask_text("agent --token=abc --verbose") == f"agent --token={MASK} --verbose"
    assert mask_text("agent --db-password abc -v") == f"agent --db-password {MASK} -v"
    assert mask_text("env API_KEY=abc AWS_SECRET_ACCESS_KEY='x y' run") == (
        f"env API_KEY={MASK} AWS_SECRET_ACCESS_KEY={MASK} run"
    )
    assert mask_text("password reset done") == "password reset done", "prose is not an option"
    assert mask_text("/opt/token-tools/bin") == "/opt/token-tools/bin"


def test_argv_lists_and_secret_named_keys_are_masked() -> None:
    assert masked(["prog", "--token", "abc", "-v"]) == ["prog", "--token", MASK, "-v"]
    assert masked({"api_key": "abc", "host_key_checking": "strict", "depth": {"secret": 3}}) == {
        "api_key": MASK,
        "host_key_checking": "strict",
        "depth": {"secret": MASK},
    }


def test_sys_info_keeps_what_matching_needs_to_show() -> None:
    info = {
        "hostname": "n1",
        "cpu_count": 4,
        "version_info": [3, 11, 7],
        "environ": {"MYSECRET": "hunter2", "PATH": "/bin"},
        "cmdline": "python agent.py --password hunter2",
        "aws_secret_access_key": "hunter2",
    }
    shown = shown_sys_info(info, DEFAULT_SHOWN)
    assert "hunter2" not in repr(shown)
    assert shown["hostname"] == "n1" and shown["cpu_count"] == 4
    assert shown["version_info"] == [3, 11, 7]
    assert shown["environ"] == {"MYSECRET": MASK, "PATH": "/bin"}
    assert info["environ"]["MYSECRET"] == "hunter2", "the stored sys_info is not changed"
