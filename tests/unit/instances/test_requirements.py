"""Reading code/requirements.txt as pip does, keying its environment, and the cache's decisions (all pure)."""

from __future__ import annotations

import dataclasses

import pytest

from modelhost.instances.requirements import (
    KEY_HEX_CHARS,
    EnvInputs,
    EnvStep,
    LocalReference,
    conflicts_with_constraints,
    distribution_name,
    env_key,
    expand_variables,
    local_references,
    next_step,
    pip_environment,
    pip_failure_summary,
    requirement_lines,
)


def test_lines_drop_comments_blanks_and_whitespace() -> None:
    text = (
        "# pinned for the model\n"
        "\n"
        "numpy>=1.26   # the worker's version\n"
        "  scikit-learn ==1.5.0\t\n"
        "git+https://example.com/repo.git#egg=thing\n"
    )
    assert requirement_lines(text) == (
        "numpy>=1.26",
        "scikit-learn ==1.5.0",
        "git+https://example.com/repo.git#egg=thing",  # '#' not after whitespace is part of the URL
    )


def test_lines_join_continuations() -> None:
    assert requirement_lines("pandas \\\n  >=2.0\nrich\\\n") == ("pandas >=2.0", "rich")


def test_formatting_alone_does_not_change_the_lines() -> None:
    a = "--no-index\n--find-links /w\nmhdemo==0.1\n"
    b = "# same thing\n--no-index  \n\n--find-links   /w # local wheels\nmhdemo==0.1"
    assert requirement_lines(a) == requirement_lines(b)


def test_variables_expand_as_pip_expands_them() -> None:
    lines = ("--extra-index-url https://${TOKEN}@pkgs.example.com/simple", "x==$VERSION", "y==${UNSET}")
    assert expand_variables(lines, {"TOKEN": "t0k", "VERSION": "1"}) == (
        "--extra-index-url https://t0k@pkgs.example.com/simple",
        "x==$VERSION",  # only ${NAME} is expanded
        "y==${UNSET}",
    )


def test_local_references() -> None:
    lines = requirement_lines(
        "-r base.txt\n"
        "--constraint=pins.txt\n"
        "-f ./wheels\n"
        "--find-links https://example.com/wheels\n"
        "--index-url https://example.com/simple\n"
        "-e ./src/mylib\n"
        "./dist/tool-1.0-py3-none-any.whl\n"
        "other @ file:///opt/wheels/other-2.0.tar.gz\n"
        "mypkg-1.0.tar.gz\n"
        "numpy>=1.26\n"
        "requests @ https://example.com/requests.whl\n"
    )
    assert local_references(lines) == (
        LocalReference("base.txt", editable=False),
        LocalReference("pins.txt", editable=False),
        LocalReference("./wheels", editable=False),
        LocalReference("./src/mylib", editable=True),
        LocalReference("./dist/tool-1.0-py3-none-any.whl", editable=False),
        LocalReference("/opt/wheels/other-2.0.tar.gz", editable=False),
        LocalReference("mypkg-1.0.tar.gz", editable=False),
    )


def test_file_urls_become_paths() -> None:
    assert local_references(("file:///opt/my%20wheels/a-1.0-py3-none-any.whl",)) == (
        LocalReference("/opt/my wheels/a-1.0-py3-none-any.whl", editable=False),
    )


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("numpy>=1.26", "numpy"),
        ("typing_extensions (>=4.6)", "typing-extensions"),
        ("Markdown.It-Py>=2.2.0", "markdown-it-py"),
        ("colorama; sys_platform == 'win32'", "colorama"),
        ('pytest>=8; extra == "test"', None),
        ("", None),
    ],
)
def test_distribution_names(requirement: str, name: str | None) -> None:
    assert distribution_name(requirement) == name


INPUTS = EnvInputs(
    requirements=("--no-index", "mhdemo==0.1"),
    references=(("./wheels", "abc"),),
    python="cpython 3.11.7 /usr",
    site_dirs=("/srv/venv/lib/python3.11/site-packages",),
    constraints=("numpy==2.4.6", "orjson==3.13.0"),
    pip_environment=(("PIP_INDEX_URL", "https://example.com/simple"),),
    code_dir=None,
)


def test_equal_inputs_share_a_key() -> None:
    key = env_key(INPUTS)
    assert key == env_key(dataclasses.replace(INPUTS))
    assert len(key) == KEY_HEX_CHARS and int(key, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"requirements": ("--no-index", "mhdemo==0.2")},
        {"references": (("./wheels", "abd"),)},  # a wheel in the wheelhouse changed
        {"python": "cpython 3.12.1 /usr"},
        {"site_dirs": ("/elsewhere/site-packages",)},
        {"constraints": ("numpy==2.4.7", "orjson==3.13.0")},  # the platform was upgraded
        {"pip_environment": ()},
        {"code_dir": "/data/artifacts/a/code"},
    ],
)
def test_every_input_is_part_of_the_key(change: dict[str, object]) -> None:
    assert env_key(dataclasses.replace(INPUTS, **change)) != env_key(INPUTS)  # type: ignore[arg-type]


def test_pip_environment_keeps_only_pip_variables_in_order() -> None:
    env = {"PIP_NO_INDEX": "1", "HOME": "/root", "PIP_FIND_LINKS": "/w", "PATH": "/bin"}
    assert pip_environment(env) == (("PIP_FIND_LINKS", "/w"), ("PIP_NO_INDEX", "1"))


@pytest.mark.parametrize(
    ("complete", "failed_build", "ended_before", "step"),
    [
        (True, None, 0, EnvStep.REUSE),
        (True, 3, 0, EnvStep.REUSE),  # built since, by someone else
        (False, None, 0, EnvStep.BUILD),  # first use
        (False, 1, 0, EnvStep.FAIL),  # waited for build 1, which failed: same answer, no second pip run
        (False, 1, 1, EnvStep.BUILD),  # came after that failure: a failure is never cached
        (False, 2, 1, EnvStep.FAIL),
    ],
)
def test_next_step(complete: bool, failed_build: int | None, ended_before: int, step: EnvStep) -> None:
    assert next_step(complete=complete, failed_build=failed_build, builds_ended_before=ended_before) is step


CONFLICT = """\
Looking in links: /w
Processing /w/mhpinned-0.1-py3-none-any.whl (from -r requirements.txt (line 3))
ERROR: Cannot install mhpinned==0.1 because these package versions have conflicting dependencies.

The conflict is caused by:
    mhpinned 0.1 depends on numpy<1
    The user requested (constraint) numpy==2.4.6

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    numpy

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip to attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""

NOT_FOUND = """\
Looking in links: /w
ERROR: Could not find a version that satisfies the requirement mh-nope==1.0 (from versions: none)
ERROR: No matching distribution found for mh-nope==1.0
"""


def test_summary_of_a_conflict_names_both_sides() -> None:
    assert pip_failure_summary(CONFLICT, 1000) == (
        "ERROR: Cannot install mhpinned==0.1 because these package versions have conflicting dependencies.\n"
        "The conflict is caused by:\n"
        "  mhpinned 0.1 depends on numpy<1\n"
        "  The user requested (constraint) numpy==2.4.6"
    )
    assert conflicts_with_constraints(CONFLICT)
    assert not conflicts_with_constraints(NOT_FOUND)


def test_summary_of_a_missing_package() -> None:
    assert pip_failure_summary(NOT_FOUND, 1000) == "\n".join(NOT_FOUND.splitlines()[1:])


def test_summary_without_error_lines_is_the_tail() -> None:
    output = "\n".join(f"line {i}" for i in range(20)) + "\nKilled\n"
    assert pip_failure_summary(output, 1000).splitlines() == [*(f"line {i}" for i in range(13, 20)), "Killed"]


def test_summary_is_cut_from_the_front() -> None:
    summary = pip_failure_summary(NOT_FOUND, 60)
    assert len(summary) == 60
    assert summary.startswith("...") and summary.endswith("No matching distribution found for mh-nope==1.0")
