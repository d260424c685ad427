"""Every option of the command line, from flags, environment, config file or defaults.

Precedence, highest first::

    --flags  >  ARCFLOW_* environment variables  >  config file  >  defaults

The config file is ``--config FILE`` (or ``$ARCFLOW_CONFIG``), else
``arcflow.toml`` in the working directory, else the ``[tool.arcflow]`` table of
``pyproject.toml`` there.  Keys are the option names with underscores or
dashes (``batch_size`` or ``batch-size``); the environment variable of a key
is ``ARCFLOW_`` + the key in capitals (``ARCFLOW_BATCH_SIZE``).

An unknown key in the file, or a value of the wrong type or out of range
anywhere, raises :class:`arcflow.ConfigError` naming the key and where it came
from (``arcflow.toml:4``, ``ARCFLOW_BATCH_SIZE``, ``--batch-size``).
Environment variables that start with ``ARCFLOW_`` but name no option are
ignored (``python -m arcflow config`` lists them).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .adaptive import AdaptiveConfig
from .config import BreakerConfig, RetryPolicy, RuntimeConfig
from .errors import ConfigError
from .executors import Executor, parse_executor
from .executors.modal.config import ModalConfig
from .executors.modal_fn.config import ModalFnConfig
from .store.dsn import redact_dsn
from .validators import Check, non_negative, optional, port, positive, whole

ENV_PREFIX = "ARCFLOW_"
CONFIG_ENV = "ARCFLOW_CONFIG"
FILE_NAME = "arcflow.toml"
PYPROJECT_TABLE = ("tool", "arcflow")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("human", "json")
PROGRESS_MODES = ("auto", "rich", "plain", "off")


# -- options --------------------------------------------------------------------------------

#: Where an option's value goes: (config class, field name).  The option's default and
#: its check are that field's, so each is written once, on the config class.
Target = tuple[type, str]


def _default_of(cls: type, name: str) -> Any:
    default: Any = attrs.fields_dict(cls)[name].default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


def _opt(
    default: Any,
    kind: str,
    help: str,
    *,
    check: Check | None = None,
    target: Target | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
    metavar: str | None = None,
) -> Any:
    """An option: an attrs field whose metadata says how to parse, check and show it.

    With ``target=(ConfigClass, "field")`` the default and the check are that
    field's (pass ``default=...`` as ``_FROM_TARGET``).
    """
    if target is not None:
        cls, name = target
        field = attrs.fields_dict(cls)[name]
        if default is _FROM_TARGET:
            default = _default_of(cls, name)
        if check is None and isinstance(field.validator, Check):
            check = field.validator
    return attrs.field(
        default=default,
        metadata={
            "kind": kind,
            "help": help,
            "check": check,
            "target": target,
            "choices": choices,
            "secret": secret,
            "metavar": metavar,
        },
    )


#: Marks an option whose default is its target field's.
_FROM_TARGET: Any = object()


def _from(cls: type, name: str, kind: str, help: str, **kwargs: Any) -> Any:
    """An option whose value goes to ``cls.name``, with that field's default and check."""
    return _opt(_FROM_TARGET, kind, help, target=(cls, name), **kwargs)


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Names from a comma-separated string, or from a list of such strings (repeated flags)."""
    parts = [value] if isinstance(value, str) else list(value)
    return tuple(name.strip() for part in parts for name in part.split(",") if name.strip())


def _pairs(value: str | list[str] | tuple[str, ...] | Mapping[str, Any]) -> tuple[str, ...]:
    """``NAME=VALUE`` entries: a list of them (repeated flags), one per line, or a TOML table."""
    if isinstance(value, Mapping):
        entries = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, str):
        entries = [line for line in value.splitlines() if line.strip()]
    else:
        entries = list(value)
    for entry in entries:
        name, sep, _ = entry.partition("=")
        if not sep or not name.strip() or any(c in name for c in " \t\n"):
            raise ValueError(f"{entry!r} is not NAME=VALUE")
    return tuple(entries)


@attrs.frozen
class Settings:
    """The effective options of one invocation, and where each value came from.

    Build it with :func:`load_settings` (flags > ``ARCFLOW_*`` > config file >
    defaults); :meth:`runtime_config` and :meth:`executor_options` turn it
    into what :class:`arcflow.Runtime` takes.
    """

    executor: str | None = _opt(
        None,
        "str",
        "python:MODULE:FUNCTION, process:'COMMAND ARGS', modal:'COMMAND ARGS' or "
        "modal-fn:APP/FUNCTION",
        metavar="SPEC",
    )
    db: str | None = _opt(
        None,
        "str",
        "PostgreSQL DSN (unset: the PG* variables, then the embedded server under data_dir)",
        secret=True,
        metavar="DSN",
    )
    data_dir: Path = _from(  # noqa: RUF009 - an attrs field
        RuntimeConfig, "data_dir", "path", "embedded database and journals", metavar="DIR"
    )
    concurrency: int = _from(RuntimeConfig, "concurrency", "int", "scenarios running at once")
    batch_size: int = _from(
        RuntimeConfig,
        "batch_size",
        "int",
        "outcomes per batch, 1..100000 (with adaptive batching: the starting size)",
    )
    flush_interval: float = _from(
        RuntimeConfig, "flush_interval", "float", "seconds a batch may wait", metavar="S"
    )
    timeout: float | None = _from(
        RuntimeConfig, "timeout", "optional_float", "per-scenario timeout in seconds", metavar="S"
    )
    epochs: int = _from(
        RuntimeConfig, "epochs", "int", "times each scenario runs (epochs 1..K), for pass@k"
    )
    attempts: int = _from(RuntimeConfig, "attempts", "int", "attempts for error/timeout outcomes")
    max_cost: float | None = _from(
        RuntimeConfig,
        "max_cost",
        "optional_float",
        "cost budget in USD (the outcomes' usage.cost_usd): once spent, no new scenario starts; "
        "--resume goes on",
        metavar="USD",
    )
    grace: float = _from(
        RuntimeConfig, "grace", "float", "seconds running scenarios get after Ctrl-C", metavar="S"
    )
    threads: int | None = _opt(
        None,
        "optional_int",
        "python: executor: worker threads for a sync function at once (unset: one per running "
        "scenario, up to --concurrency)",
        check=optional(whole(1)),
        metavar="N",
    )
    pass_env: tuple[str, ...] = _opt(
        (),
        "names",
        "process: executor: environment variables passed to each scenario's command, besides "
        "PATH, HOME, the locale and a few more (never ARCFLOW_*, PG*); repeatable, comma-separated",
        metavar="NAME",
    )
    env: tuple[str, ...] = _opt(
        (),
        "pairs",
        "process: executor: NAME=VALUE set in each scenario's command environment; repeatable",
        secret=True,
        metavar="NAME=VALUE",
    )
    modal_app: str = _from(
        ModalConfig,
        "app_name",
        "str",
        "modal: executor: app looked up or created by name",
        metavar="NAME",
    )
    modal_image: str | None = _from(
        ModalConfig,
        "image",
        "str",
        "modal: executor: registry image tag (unset: Debian slim with --modal-pip)",
        metavar="TAG",
    )
    modal_pip: tuple[str, ...] = _from(
        ModalConfig,
        "pip",
        "names",
        "modal: executor: pip packages for the Debian slim image, comma-separated",
        metavar="PKGS",
    )
    modal_secrets: tuple[str, ...] = _from(
        ModalConfig,
        "secrets",
        "names",
        "modal: executor: Modal secret names, comma-separated",
        metavar="NAMES",
    )
    modal_cpu: float | None = _from(
        ModalConfig, "cpu", "optional_float", "modal: executor: CPU cores per sandbox", metavar="N"
    )
    modal_memory: int | None = _from(
        ModalConfig,
        "memory",
        "optional_int",
        "modal: executor: memory per sandbox in MiB",
        metavar="MIB",
    )
    modal_creation_rate: float | None = _from(
        ModalConfig,
        "max_creations_per_second",
        "optional_float",
        "modal: executor: sandbox creations per second at most (unset: no ceiling; "
        "the rate adapts to what Modal allows)",
        metavar="N",
    )
    modal_initial_creation_rate: float = _from(
        ModalConfig,
        "initial_creations_per_second",
        "float",
        "modal: executor: sandbox creations per second at the start (what a new account allows)",
        metavar="N",
    )
    modal_max_starting: int = _from(
        ModalConfig,
        "max_starting",
        "int",
        "modal: executor: sandboxes starting at once at most",
        metavar="N",
    )
    modal_outage_retry: float = _from(
        ModalConfig,
        "outage_retry_s",
        "float",
        "modal: executor: seconds an attempt retries while Modal's control plane is unreachable",
        metavar="S",
    )
    modal_fn_environment: str | None = _from(
        ModalFnConfig,
        "environment_name",
        "str",
        "modal-fn: executor: Modal environment the app is deployed in (unset: the profile's)",
        metavar="NAME",
    )
    modal_fn_spawn_retry: float = _from(
        ModalFnConfig,
        "spawn_retry_s",
        "float",
        "modal-fn: executor: seconds an attempt retries spawns Modal refuses (rate limit, backlog)",
        metavar="S",
    )
    modal_fn_outage_retry: float = _from(
        ModalFnConfig,
        "outage_retry_s",
        "float",
        "modal-fn: executor: seconds an attempt retries while Modal's control plane is unreachable",
        metavar="S",
    )
    modal_fn_cancel_timeout: float = _from(
        ModalFnConfig,
        "cancel_timeout_s",
        "float",
        "modal-fn: executor: seconds a cancel of a timed-out or stopped call may take",
        metavar="S",
    )
    modal_pool: int | None = _from(
        ModalConfig,
        "pool",
        "optional_int",
        "modal: executor: keep N long-lived sandboxes and run each scenario in a free one "
        "with Sandbox.exec (unset: a new sandbox per scenario)",
        metavar="N",
    )
    modal_pool_max_uses: int = _from(
        ModalConfig,
        "pool_max_uses",
        "int",
        "modal: executor: scenarios a pooled sandbox runs before it is replaced",
        metavar="N",
    )
    max_retries: int = _from(RetryPolicy, "max_retries", "int", "retries of a failed batch write")
    breaker_threshold: int = _from(
        BreakerConfig, "failure_threshold", "int", "failures that open the breaker"
    )
    breaker_cooldown: float = _from(
        BreakerConfig, "cooldown", "float", "seconds before a probe", metavar="S"
    )
    journal_max_bytes: int = _from(
        RuntimeConfig, "journal_max_bytes", "int", "spill journal cap in bytes", metavar="N"
    )
    statement_timeout: float = _from(
        RuntimeConfig,
        "statement_timeout",
        "float",
        "seconds a database statement may take before it counts as a transient failure",
        metavar="S",
    )
    lease: float = _from(
        RuntimeConfig,
        "lease",
        "float",
        "shared runs: seconds a worker's claim lasts without a heartbeat before others may take it",
        metavar="S",
    )
    tcp_keepalive: float = _from(
        RuntimeConfig,
        "tcp_keepalive",
        "float",
        "seconds after which a silent database connection is probed (half-open connections)",
        metavar="S",
    )
    writer_connections: int = _from(
        RuntimeConfig,
        "writer_connections",
        "int",
        "database connections the writer writes batches through (1-8)",
        metavar="N",
    )
    adaptive_batching: bool = _opt(
        False,
        "bool",
        "adjust the batch size between the bounds from the measured write latency (AIMD)",
    )
    min_batch_size: int = _from(
        AdaptiveConfig, "minimum", "int", "adaptive batching: smallest batch"
    )
    max_batch_size: int = _from(
        AdaptiveConfig, "maximum", "int", "adaptive batching: largest batch"
    )
    target_latency: float = _from(
        AdaptiveConfig,
        "target_latency",
        "float",
        "adaptive batching: seconds one batch write should take",
        metavar="S",
    )
    progress: str = _opt(
        "auto",
        "choice",
        "live display: auto (rich on a terminal, plain lines otherwise), rich, plain or off",
        choices=PROGRESS_MODES,
    )
    progress_interval: float = _opt(
        10.0, "float", "seconds between plain progress lines", check=positive, metavar="S"
    )
    metrics_port: int | None = _opt(
        None,
        "optional_int",
        "serve Prometheus metrics on this port (0: any free port)",
        check=port,
        metavar="PORT",
    )
    metrics_host: str = _opt(
        "127.0.0.1", "str", "address the metrics endpoint binds to", metavar="HOST"
    )
    metrics_linger: float = _opt(
        0.0,
        "float",
        "seconds the metrics endpoint keeps serving the final values after the run",
        check=non_negative,
        metavar="S",
    )
    log_level: str = _opt(
        "WARNING", "choice", "DEBUG, INFO, WARNING, ERROR or CRITICAL", choices=LOG_LEVELS
    )
    log_format: str = _opt(
        "human", "choice", "human or json (one JSON object per line)", choices=LOG_FORMATS
    )

    #: Where each value came from: ``default``, a file location, an environment variable or a flag.
    sources: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)
    #: The config file read, if any.
    file: Path | None = attrs.field(default=None, eq=False)
    #: ``ARCFLOW_*`` variables that name no option (ignored).
    ignored_env: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False)

    def _targeting(self, cls: type) -> dict[str, Any]:
        """The values of every option whose target is a field of ``cls``, by field name."""
        return {
            spec.target[1]: getattr(self, key)
            for key, spec in OPTIONS.items()
            if spec.target is not None and spec.target[0] is cls
        }

    def runtime_config(self) -> RuntimeConfig:
        """The runtime's configuration from these settings."""
        return RuntimeConfig(
            **self._targeting(RuntimeConfig),
            retry=RetryPolicy(**self._targeting(RetryPolicy)),
            breaker=BreakerConfig(**self._targeting(BreakerConfig)),
        )

    def adaptive_config(self) -> AdaptiveConfig:
        """Bounds and target of adaptive batching."""
        return AdaptiveConfig(**self._targeting(AdaptiveConfig))

    def modal_config(self) -> ModalConfig:
        """The ``modal:`` executor's configuration from the ``modal_*`` options."""
        return ModalConfig(**self._targeting(ModalConfig))

    def modal_fn_config(self) -> ModalFnConfig:
        """The ``modal-fn:`` executor's configuration from the ``modal_fn_*`` options."""
        return ModalFnConfig(**self._targeting(ModalFnConfig))

    def executor_options(self) -> dict[str, Any]:
        """Keyword options for ``parse_executor(self.executor, **options)``.

        The modal config for ``modal:`` (``modal-fn:``); the environment for ``process:``.
        """
        spec = self.executor or ""
        if spec.startswith("modal:"):
            return {"config": self.modal_config()}
        if spec.startswith("modal-fn:"):
            return {"config": self.modal_fn_config()}
        if spec.startswith("process:"):
            env = dict(entry.partition("=")[::2] for entry in self.env)
            return {"pass_env": self.pass_env, "env": env}
        if spec.startswith("python:") and self.threads is not None:
            return {"threads": self.threads}
        return {}

    def make_executor(self) -> Executor:
        """The executor these settings name; :class:`ConfigError` if there is none."""
        if not self.executor:
            raise ConfigError(
                "no executor: give --executor SPEC (or ARCFLOW_EXECUTOR, or executor in arcflow.toml)"
            )
        return parse_executor(self.executor, **self.executor_options())

    def effective(self, *, redact: bool = True) -> dict[str, dict[str, Any]]:
        """``{key: {"value": ..., "source": ...}}`` for every option, secrets redacted."""
        out: dict[str, dict[str, Any]] = {}
        for spec in OPTIONS.values():
            value = getattr(self, spec.key)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            if redact and spec.secret and value is not None:
                if isinstance(value, list):  # NAME=VALUE entries: the names only
                    value = [f"{entry.partition('=')[0]}=***" for entry in value]
                else:
                    value = redact_dsn(value)
            out[spec.key] = {"value": value, "source": self.sources.get(spec.key, "default")}
        return out


# -- option specs ------------------------------------------------------------------------------


@attrs.frozen
class OptionSpec:
    """How one option is spelled, parsed and checked."""

    key: str
    kind: str
    default: Any
    help: str
    check: Check | None
    target: Target | None
    choices: tuple[str, ...]
    secret: bool
    metavar: str | None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


def _specs() -> dict[str, OptionSpec]:
    specs = {}
    for field in attrs.fields(Settings):
        if "kind" not in field.metadata:
            continue
        m = field.metadata
        specs[field.name] = OptionSpec(
            field.name,
            m["kind"],
            field.default,
            m["help"],
            m["check"],
            m["target"],
            m["choices"],
            m["secret"],
            m["metavar"],
        )
    return specs


#: Every option, by key, in display order.
OPTIONS: dict[str, OptionSpec] = _specs()


# -- parsing one value --------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_text(spec: OptionSpec, text: str) -> Any:
    """Parse an environment variable's text; raise ValueError saying what is expected."""
    raw = text.strip()
    kind = spec.kind
    if kind.startswith("optional_") and raw.lower() in ("", "none"):
        return None
    if kind in ("int", "optional_int"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if kind in ("float", "optional_float"):
        try:
            return float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
    if kind == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError("must be true or false (1/0, yes/no, on/off)")
    return _from_toml(spec, text)


def _from_toml(spec: OptionSpec, value: Any) -> Any:
    """Check a TOML (or already parsed) value's type; raise ValueError saying what is expected."""
    kind = spec.kind
    if kind.startswith("optional_") and (
        value is None or (isinstance(value, str) and value.lower() == "none")
    ):
        return None
    if kind in ("int", "optional_int"):
        if not _is_int(value):
            raise ValueError("must be a whole number")
        return value
    if kind in ("float", "optional_float"):
        if not (_is_int(value) or isinstance(value, float)):
            raise ValueError("must be a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind == "path" and isinstance(value, Path):
        return value
    if kind == "names":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return _names(value)
        if not isinstance(value, str):
            raise ValueError("must be a comma-separated string or a list of strings")
        return _names(value)
    if kind == "pairs":
        if isinstance(value, Mapping) or (
            isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        ):
            return _pairs(value)
        if not isinstance(value, str):
            raise ValueError("must be NAME=VALUE entries (a list, a table, or one per line)")
        return _pairs(value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if kind == "path":
        return Path(value)
    if kind == "choice":
        normal = value.upper() if spec.key == "log_level" else value.lower()
        if normal not in spec.choices:
            raise ValueError(f"must be one of {', '.join(spec.choices)}")
        return normal
    return value


def _checked(spec: OptionSpec, value: Any) -> Any:
    """``value`` if the option's check accepts it; ValueError with what is expected if not."""
    if spec.check is not None and value is not None and not spec.check.accepts(value):
        raise ValueError(spec.check.expected)
    return value


# -- the config file ------------------------------------------------------------------------------


def find_config_file(
    explicit: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """The config file to read: ``--config``, ``$ARCFLOW_CONFIG``, ``arcflow.toml``, ``pyproject.toml``."""
    env = os.environ if environ is None else environ
    chosen = explicit or env.get(CONFIG_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            origin = "--config" if explicit else CONFIG_ENV
            raise ConfigError(f"config file {path} (from {origin}) does not exist")
        return path
    here = cwd or Path.cwd()
    if (here / FILE_NAME).is_file():
        return here / FILE_NAME
    pyproject = here / "pyproject.toml"
    if pyproject.is_file() and _pyproject_table(pyproject, _load_toml(pyproject)[0]) is not None:
        return pyproject
    return None


def _load_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _pyproject_table(path: Path, doc: Mapping[str, Any]) -> dict[str, Any] | None:
    table: Any = doc
    for part in PYPROJECT_TABLE:
        if not isinstance(table, Mapping) or part not in table:
            return None
        table = table[part]
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [tool.arcflow] must be a table")
    return dict(table)


def _key_line(text: str, key: str, section: str | None) -> int | None:
    """The line a key is set on (for messages), within ``section`` (None: the top level)."""
    current: str | None = None
    pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""")
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    for lineno, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = re.sub(r"\s+", "", m.group(1)).replace('"', "")
            if section is None and current == key:
                return lineno
            continue
        if current == section and pattern.match(line):
            return lineno
    return None


def read_config_file(path: Path) -> dict[str, tuple[Any, str]]:
    """``{key: (value, "file:line")}`` from a config file; unknown keys raise ConfigError."""
    doc, text = _load_toml(path)
    section: str | None = None
    if path.name == "pyproject.toml":
        table = _pyproject_table(path, doc) or {}
        section = ".".join(PYPROJECT_TABLE)
    else:
        table = doc
    values: dict[str, tuple[Any, str]] = {}
    for raw_key, value in table.items():
        line = _key_line(text, raw_key, section)
        where = f"{path}:{line}" if line else str(path)
        key = raw_key.replace("-", "_")
        if key not in OPTIONS:
            hint = difflib.get_close_matches(key, OPTIONS, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{where}: unknown key {raw_key!r}{suggestion}; valid keys: {', '.join(OPTIONS)}"
            )
        if key in values:
            raise ConfigError(f"{where}: key {key!r} is set twice ({values[key][1]})")
        values[key] = (value, where)
    return values


# -- putting it together -----------------------------------------------------------------------


def _parse_file_values(path: Path) -> dict[str, tuple[Any, str]]:
    parsed: dict[str, tuple[Any, str]] = {}
    for key, (value, where) in read_config_file(path).items():
        spec = OPTIONS[key]
        try:
            parsed[key] = (_checked(spec, _from_toml(spec, value)), where)
        except ValueError as exc:
            raise ConfigError(f"{where}: invalid {key} = {_show(value)}: {exc}") from None
    return parsed


def _parse_env_values(env: Mapping[str, str]) -> tuple[dict[str, tuple[Any, str]], tuple[str, ...]]:
    parsed: dict[str, tuple[Any, str]] = {}
    by_env = {spec.env: spec for spec in OPTIONS.values()}
    ignored = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        spec = by_env.get(name)
        if spec is None:
            ignored.append(name)
            continue
        text = env[name]
        try:
            parsed[spec.key] = (_checked(spec, _from_text(spec, text)), name)
        except ValueError as exc:
            shown = "***" if spec.secret else repr(text)
            raise ConfigError(f"invalid {name}={shown} ({spec.key}): {exc}") from None
    return parsed, tuple(ignored)


def _parse_flag_values(
    flags: Mapping[str, Any], *, source: str | None = None
) -> dict[str, tuple[Any, str]]:
    """Values given by key (flags, or an embedder's defaults when ``source`` names them)."""
    parsed: dict[str, tuple[Any, str]] = {}
    for key, value in flags.items():
        spec = OPTIONS.get(key)
        if spec is None:
            hint = difflib.get_close_matches(key, OPTIONS, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"unknown option {key!r}{suggestion}; valid: {', '.join(OPTIONS)}")
        where = source or spec.flag
        try:
            parsed[key] = (_checked(spec, _from_toml(spec, value)), where)
        except ValueError as exc:
            shown = "***" if spec.secret else _flag_text(value)
            name = spec.flag if source is None else f"{key} ({source})"
            raise ConfigError(f"invalid {name}={shown}: {exc}") from None
    return parsed


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """The effective settings: ``flags`` > ``ARCFLOW_*`` > config file > ``defaults`` > arcflow's.

    ``flags`` holds only the options given on the command line (or by an
    embedding program that wants them to win), by key; ``defaults`` are an
    embedding program's own defaults, which the environment and the file
    override.  Both are checked like any other source.  Embedders get the same
    layering as ``python -m arcflow``::

        settings = arcflow.load_settings(defaults={"flush_interval": 5.0})
        async with arcflow.open_runtime(db=settings.db, config=settings.runtime_config()) as rt:
            ...
    """
    env = os.environ if environ is None else environ
    path = find_config_file(config_file, environ=env, cwd=cwd)
    env_values, ignored = _parse_env_values(env)
    layers = [
        _parse_flag_values(defaults or {}, source="default (application)"),
        _parse_file_values(path) if path is not None else {},
        env_values,
        _parse_flag_values(flags or {}),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        for key, (value, where) in layer.items():
            values[key] = value
            sources[key] = where
    settings = Settings(**values, sources=sources, file=path, ignored_env=ignored)
    _check_together(settings)
    return settings


def _check_together(s: Settings) -> None:
    """Rules that involve more than one option (only when they matter)."""
    if not s.adaptive_batching:
        return
    where = s.sources
    if s.min_batch_size > s.max_batch_size:
        raise ConfigError(
            f"min_batch_size={s.min_batch_size} ({where.get('min_batch_size', 'default')}) exceeds "
            f"max_batch_size={s.max_batch_size} ({where.get('max_batch_size', 'default')})"
        )
    if not s.min_batch_size <= s.batch_size <= s.max_batch_size:
        raise ConfigError(
            f"batch_size={s.batch_size} ({where.get('batch_size', 'default')}) must be between "
            f"min_batch_size={s.min_batch_size} and max_batch_size={s.max_batch_size} "
            "with adaptive batching (it is the starting size)"
        )


# -- showing ---------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str | bool) or value is None else repr(value)


def _flag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def format_settings(settings: Settings) -> str:
    """The effective configuration as TOML (secrets redacted), each line saying its source."""
    lines = [
        "# effective arcflow configuration; precedence: flags > ARCFLOW_* environment > file > defaults",
        f"# config file: {settings.file if settings.file else '(none found)'}",
    ]
    rows = []
    for key, item in settings.effective().items():
        value, source = item["value"], item["source"]
        text = f"# {key} (not set)" if value is None else f"{key} = {_toml_value(value)}"
        rows.append((text, source))
    width = max(len(text) for text, _ in rows)
    lines += [f"{text:<{width}}  # {source}" for text, source in rows]
    if settings.ignored_env:
        lines.append(f"# ignored (not options): {', '.join(settings.ignored_env)}")
    return "\n".join(lines) + "\n"


__all__ = [
    "OPTIONS",
    "OptionSpec",
    "Settings",
    "find_config_file",
    "format_settings",
    "load_settings",
    "read_config_file",
]
