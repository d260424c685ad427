"""Configuration from flags, ARCFLOW_* variables, arcflow.toml / pyproject.toml and defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arcflow import cli
from arcflow.errors import ConfigError
from arcflow.settings import OPTIONS, Settings, format_settings, load_settings

NO_ENV: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ARCFLOW_* variable of the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("ARCFLOW_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_documented_cli_defaults(tmp_path: Path) -> None:
    """With no flag, variable or file, every option has its documented default."""
    s = load_settings({}, environ=NO_ENV, cwd=tmp_path)
    assert s.file is None
    assert (s.concurrency, s.batch_size, s.flush_interval, s.timeout) == (8, 100, 30.0, None)
    assert (s.attempts, s.grace, s.max_retries, s.breaker_threshold, s.breaker_cooldown) == (
        1,
        30.0,
        3,
        5,
        5.0,
    )
    assert s.journal_max_bytes == 1 << 30 and s.data_dir == Path(".arcflow")
    assert (s.metrics_port, s.metrics_host, s.log_level, s.log_format, s.progress) == (
        None,
        "127.0.0.1",
        "WARNING",
        "human",
        "auto",
    )
    assert set(s.effective()) == set(OPTIONS)
    assert all(item["source"] == "default" for item in s.effective().values())


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    """A flag beats ARCFLOW_*, which beats the file, which beats the default; sources say which."""
    write(tmp_path / "arcflow.toml", "batch_size = 200\nconcurrency = 3\nflush_interval = 2.5\n")
    env = {"ARCFLOW_BATCH_SIZE": "300", "ARCFLOW_CONCURRENCY": "4"}
    s = load_settings({"batch_size": 400}, environ=env, cwd=tmp_path)
    assert (s.batch_size, s.concurrency, s.flush_interval, s.attempts) == (400, 4, 2.5, 1)
    assert s.sources["batch_size"] == "--batch-size"
    assert s.sources["concurrency"] == "ARCFLOW_CONCURRENCY"
    assert s.sources["flush_interval"] == f"{tmp_path / 'arcflow.toml'}:3"
    assert "attempts" not in s.sources
    assert s.runtime_config().batch_size == 400


def test_pyproject_tool_arcflow_table_is_read(tmp_path: Path) -> None:
    """Without arcflow.toml, [tool.arcflow] in pyproject.toml is the config file, dashes allowed."""
    write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.arcflow]\nbatch-size = 42\nlog_format = "json"\n',
    )
    s = load_settings({}, environ=NO_ENV, cwd=tmp_path)
    assert s.file == tmp_path / "pyproject.toml"
    assert (s.batch_size, s.log_format) == (42, "json")
    assert s.sources["batch_size"].endswith("pyproject.toml:5")


def test_pyproject_without_the_table_is_no_config(tmp_path: Path) -> None:
    """A pyproject.toml with no [tool.arcflow] is not a config file."""
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert load_settings({}, environ=NO_ENV, cwd=tmp_path).file is None


def test_arcflow_toml_wins_over_pyproject(tmp_path: Path) -> None:
    """arcflow.toml is preferred to [tool.arcflow] when both exist."""
    write(tmp_path / "pyproject.toml", "[tool.arcflow]\nbatch_size = 1\n")
    write(tmp_path / "arcflow.toml", "batch_size = 2\n")
    assert load_settings({}, environ=NO_ENV, cwd=tmp_path).batch_size == 2


def test_explicit_config_file_and_arcflow_config_variable(tmp_path: Path) -> None:
    """--config FILE (or ARCFLOW_CONFIG) names the file; a missing one is an error naming it."""
    path = write(tmp_path / "other.toml", "attempts = 3\n")
    assert load_settings({}, config_file=path, environ=NO_ENV, cwd=tmp_path).attempts == 3
    assert load_settings({}, environ={"ARCFLOW_CONFIG": str(path)}, cwd=tmp_path).attempts == 3
    with pytest.raises(ConfigError, match=r"missing\.toml \(from --config\) does not exist"):
        load_settings({}, config_file=tmp_path / "missing.toml", environ=NO_ENV, cwd=tmp_path)


def test_unknown_key_names_key_file_line_and_suggests(tmp_path: Path) -> None:
    """An unknown key is an error with file:line, the key and the closest valid key."""
    write(tmp_path / "arcflow.toml", "concurrency = 2\n\nbatchsize = 10\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, environ=NO_ENV, cwd=tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'arcflow.toml'}:3: unknown key 'batchsize'" in message
    assert "did you mean 'batch_size'?" in message


def test_nested_table_is_an_unknown_key(tmp_path: Path) -> None:
    """Options are flat: a [section] is reported as an unknown key on its header line."""
    write(tmp_path / "arcflow.toml", "concurrency = 2\n[retry]\nmax = 3\n")
    with pytest.raises(ConfigError, match=r"arcflow\.toml:2: unknown key 'retry'"):
        load_settings({}, environ=NO_ENV, cwd=tmp_path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'batch_size = "100"',
            r"arcflow\.toml:1: invalid batch_size = \"100\": must be a whole number",
        ),
        (
            "batch_size = 0",
            r"arcflow\.toml:1: invalid batch_size = 0: must be a whole number between 1 and 100000",
        ),
        ("flush_interval = -1", r"invalid flush_interval = -1: must be a number > 0"),
        ("adaptive_batching = 1", r"invalid adaptive_batching = 1: must be true or false"),
        ('log_format = "xml"', r"invalid log_format = \"xml\": must be one of human, json"),
        ("metrics_port = 70000", r"invalid metrics_port = 70000: must be a TCP port"),
    ],
)
def test_bad_file_values_name_the_key_and_line(tmp_path: Path, line: str, expected: str) -> None:
    """A value of the wrong type or out of range in the file names file:line, key and what is valid."""
    write(tmp_path / "arcflow.toml", line + "\n")
    with pytest.raises(ConfigError, match=expected):
        load_settings({}, environ=NO_ENV, cwd=tmp_path)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the parser's line and column."""
    write(tmp_path / "arcflow.toml", "concurrency = 2\nbatch_size = = 3\n")
    with pytest.raises(ConfigError, match=r"arcflow\.toml: invalid TOML: .*line 2"):
        load_settings({}, environ=NO_ENV, cwd=tmp_path)


def test_bad_environment_values_name_the_variable_and_key(tmp_path: Path) -> None:
    """ARCFLOW_BATCH_SIZE=abc is an error naming the variable, the key and the expected type."""
    with pytest.raises(
        ConfigError,
        match=r"invalid ARCFLOW_BATCH_SIZE='abc' \(batch_size\): must be a whole number",
    ):
        load_settings({}, environ={"ARCFLOW_BATCH_SIZE": "abc"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"ARCFLOW_GRACE='-2' \(grace\): must be a number >= 0"):
        load_settings({}, environ={"ARCFLOW_GRACE": "-2"}, cwd=tmp_path)


def test_environment_text_forms(tmp_path: Path) -> None:
    """Booleans accept 1/true/yes/on, optional numbers accept none, choices any case."""
    env = {
        "ARCFLOW_ADAPTIVE_BATCHING": "yes",
        "ARCFLOW_TIMEOUT": "none",
        "ARCFLOW_LOG_LEVEL": "debug",
        "ARCFLOW_METRICS_PORT": "9464",
        "ARCFLOW_TEST_DB": "ignored",
    }
    s = load_settings({}, environ=env, cwd=tmp_path)
    assert (s.adaptive_batching, s.timeout, s.log_level, s.metrics_port) == (
        True,
        None,
        "DEBUG",
        9464,
    )
    assert s.ignored_env == ("ARCFLOW_TEST_DB",)


def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    """A flag out of range reads as before: invalid --batch-size=0: ..."""
    with pytest.raises(
        ConfigError, match=r"^invalid --batch-size=0: must be a whole number between 1 and 100000$"
    ):
        load_settings({"batch_size": 0}, environ=NO_ENV, cwd=tmp_path)


def test_adaptive_bounds_are_checked_together(tmp_path: Path) -> None:
    """With adaptive batching, min <= batch_size <= max, and the error names keys and sources."""
    with pytest.raises(
        ConfigError, match=r"min_batch_size=500 \(--min-batch-size\) exceeds max_batch_size=100"
    ):
        load_settings(
            {"adaptive_batching": True, "min_batch_size": 500, "max_batch_size": 100},
            environ=NO_ENV,
            cwd=tmp_path,
        )
    with pytest.raises(
        ConfigError, match=r"batch_size=5 \(--batch-size\) must be between min_batch_size=10"
    ):
        load_settings({"adaptive_batching": True, "batch_size": 5}, environ=NO_ENV, cwd=tmp_path)
    # Without adaptive batching the bounds do not matter.
    assert load_settings({"batch_size": 5}, environ=NO_ENV, cwd=tmp_path).batch_size == 5


def test_effective_configuration_redacts_the_password(tmp_path: Path) -> None:
    """The effective view and its TOML rendering never show the database password."""
    env = {"ARCFLOW_DB": "postgresql://u:hunter2@db.example/prod"}
    s = load_settings({}, environ=env, cwd=tmp_path)
    assert s.db == "postgresql://u:hunter2@db.example/prod"
    assert s.effective()["db"] == {
        "value": "postgresql://u:***@db.example/prod",
        "source": "ARCFLOW_DB",
    }
    text = format_settings(s)
    assert "hunter2" not in text
    assert 'db = "postgresql://u:***@db.example/prod"' in text


def test_settings_is_frozen() -> None:
    """Settings cannot be changed after loading."""
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Settings().batch_size = 3  # type: ignore[misc]


# -- `python -m arcflow config` -----------------------------------------------------------------


def test_config_command_prints_values_and_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config` prints every option as TOML with its source, secrets redacted, exit 0."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "arcflow.toml", 'batch_size = 250\nexecutor = "python:m:f"\n')
    monkeypatch.setenv("ARCFLOW_DB", "postgresql://me:s3cret@h/db")
    assert cli.main(["config", "--concurrency", "12"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    lines = {
        line.split(" = ")[0]: line
        for line in out.splitlines()
        if " = " in line and not line.startswith("#")
    }
    unset = {
        "timeout",
        "threads",
        "max_cost",
        "metrics_port",
        "modal_image",
        "modal_cpu",
        "modal_memory",
        "modal_creation_rate",
        "modal_fn_environment",
        "modal_pool",
    }
    assert set(lines) == set(OPTIONS) - unset  # options left unset (None) are not printed
    assert lines["batch_size"].endswith(f"# {tmp_path / 'arcflow.toml'}:1")
    assert lines["concurrency"].startswith("concurrency = 12") and lines["concurrency"].endswith(
        "# --concurrency"
    )
    assert lines["db"].endswith("# ARCFLOW_DB") and "me:***@h/db" in lines["db"]
    assert lines["grace"].endswith("# default")
    assert lines["modal_pip"].startswith("modal_pip = []")  # a list option: empty by default


def test_config_command_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config --format json` gives {file, options: {key: {value, source}}, ignored_environment}."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCFLOW_NOT_AN_OPTION", "1")
    assert cli.main(["config", "--format", "json", "--no-adaptive-batching"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file"] is None
    assert data["options"]["adaptive_batching"] == {"value": False, "source": "--adaptive-batching"}
    assert data["options"]["data_dir"] == {"value": ".arcflow", "source": "default"}
    assert data["ignored_environment"] == ["ARCFLOW_NOT_AN_OPTION"]


def test_config_command_bad_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config` with an invalid file exits 2 and the message names key, file and line."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "arcflow.toml", "\nconcurrency = 0\n")
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err
    assert (
        "arcflow.toml:2: invalid concurrency = 0: must be a whole number between 1 and 100000"
        in err
    )


def test_run_without_executor_anywhere_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` needs an executor from a flag, ARCFLOW_EXECUTOR or the file; none is exit 2 saying so."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "s.jsonl", '{"id": "a"}\n')
    assert cli.main(["run", "s.jsonl", "--db", "postgresql://nobody@127.0.0.1:1/x"]) == 2
    assert (
        "no executor: give --executor SPEC (or ARCFLOW_EXECUTOR, or executor in arcflow.toml)"
        in capsys.readouterr().err
    )


def test_run_bad_flag_still_reads_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --batch-size 0` exits 2 with the same message as before config files existed."""
    assert (
        cli.main(
            ["run", str(tmp_path / "s.jsonl"), "--executor", "python:m:f", "--batch-size", "0"]
        )
        == 2
    )
    assert (
        "arcflow: error: invalid --batch-size=0: must be a whole number between 1 and 100000"
        in capsys.readouterr().err
    )


def test_every_option_is_documented() -> None:
    """docs/operations.md has a row for every key, with its flag and environment variable."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text(
        encoding="utf-8"
    )
    for spec in OPTIONS.values():
        assert f"| `{spec.key}` | `{spec.flag}`" in text, spec.key
        assert f"`{spec.env}`" in text, spec.env


def test_defaults_and_checks_are_the_config_classes_own() -> None:
    """An option with a target has that config field's default and validator, written once."""
    import attrs

    targeted = {key: spec for key, spec in OPTIONS.items() if spec.target is not None}
    assert {"concurrency", "max_retries", "breaker_cooldown", "modal_creation_rate"} <= set(
        targeted
    )
    for key, spec in targeted.items():
        cls, name = spec.target
        field = attrs.fields_dict(cls)[name]
        default = (
            field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
        )
        assert spec.default == default, key
        assert spec.check is field.validator or field.validator is None, key


def test_settings_build_what_a_runtime_takes(tmp_path: Path) -> None:
    """runtime_config() and modal_config() carry every targeted option to its field."""
    s = load_settings(
        {"max_retries": 7, "breaker_cooldown": 2.5, "writer_connections": 1},
        environ={"ARCFLOW_MODAL_PIP": "numpy, pandas", "ARCFLOW_MODAL_CREATION_RATE": "12"},
        cwd=tmp_path,
    )
    config = s.runtime_config()
    assert (config.retry.max_retries, config.breaker.cooldown, config.writer_connections) == (
        7,
        2.5,
        1,
    )
    modal = s.modal_config()
    assert modal.pip == ("numpy", "pandas")
    assert modal.max_creations_per_second == 12.0


def test_list_options_take_a_toml_list_or_a_comma_string(tmp_path: Path) -> None:
    """modal_secrets reads a TOML list of strings or a comma-separated string; anything else is refused."""
    write(tmp_path / "arcflow.toml", 'modal_secrets = ["a", "b"]\n')
    assert load_settings({}, environ=NO_ENV, cwd=tmp_path).modal_secrets == ("a", "b")
    write(tmp_path / "arcflow.toml", "modal_secrets = 3\n")
    with pytest.raises(ConfigError, match="modal_secrets = 3: must be a comma-separated string"):
        load_settings({}, environ=NO_ENV, cwd=tmp_path)


def test_application_defaults_sit_below_environment_and_file(tmp_path: Path) -> None:
    """defaults= is the lowest layer an embedder sets: the environment still wins, and it is checked."""
    s = load_settings({}, environ=NO_ENV, cwd=tmp_path, defaults={"flush_interval": 5.0})
    assert s.flush_interval == 5.0 and s.sources["flush_interval"] == "default (application)"
    s = load_settings(
        {}, environ={"ARCFLOW_FLUSH_INTERVAL": "2"}, cwd=tmp_path, defaults={"flush_interval": 5.0}
    )
    assert s.flush_interval == 2.0
    with pytest.raises(ConfigError, match=r"invalid flush_interval \(default \(application\)\)=0"):
        load_settings({}, environ=NO_ENV, cwd=tmp_path, defaults={"flush_interval": 0})
    with pytest.raises(
        ConfigError, match="unknown option 'batch_sise' \\(did you mean 'batch_size'\\?\\)"
    ):
        load_settings({"batch_sise": 1}, environ=NO_ENV, cwd=tmp_path)


def test_make_executor_passes_the_modal_options(tmp_path: Path) -> None:
    """make_executor() builds the named executor; a modal: spec gets the modal_* options."""
    from arcflow.executors.modal import ModalExecutor

    s = load_settings(
        {"executor": "modal:python /app/score.py", "modal_max_starting": 3},
        environ=NO_ENV,
        cwd=tmp_path,
    )
    executor = s.make_executor()
    assert isinstance(executor, ModalExecutor)
    assert executor.config.max_starting == 3
    with pytest.raises(ConfigError, match="no executor"):
        load_settings({}, environ=NO_ENV, cwd=tmp_path).make_executor()


@pytest.mark.parametrize(
    ("concurrency", "expected"), [(1, 2), (8, 16), (1_000, 100), (10_000, 1_000), (20_000, 2_000)]
)
def test_the_work_queue_holds_a_burst_of_endings_at_high_concurrency(
    concurrency: int, expected: int
) -> None:
    """The default scenario queue is 2 x concurrency up to 32, then a tenth of the concurrency."""
    from arcflow.config import RuntimeConfig

    assert RuntimeConfig(concurrency=concurrency).effective_work_buffer == expected
    assert RuntimeConfig(concurrency=concurrency, work_buffer=3).effective_work_buffer == 3


@pytest.mark.parametrize(
    ("batch_size", "expected"), [(1, 4), (100, 400), (1_000, 4_000), (100_000, 120_000)]
)
def test_the_outcome_queue_holds_several_batches(batch_size: int, expected: int) -> None:
    """The default outcome queue is 4 batches (at most one batch + 20,000); a set value wins."""
    from arcflow.config import RuntimeConfig

    assert RuntimeConfig(batch_size=batch_size).effective_outcome_buffer == expected
    assert RuntimeConfig(batch_size=batch_size, outcome_buffer=3).effective_outcome_buffer == 3
