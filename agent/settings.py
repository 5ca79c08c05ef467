"""Agent settings and where they come from.

Precedence, highest first: command-line flags > environment (`DSV4_<FIELD>`, e.g.
`DSV4_MAX_STEPS`) > project file (`.dsv4.toml`, else `pyproject.toml [tool.dsv4]`) > user
file (`$XDG_CONFIG_HOME/dsv4/config.toml`, default `~/.config/dsv4/config.toml`) > defaults.

A project file comes with the repository, which may not be the user's own, so it cannot set
what only the user should decide: `api_key` (a secret, and it would be committed) and `yes`
(consent to run tools without asking). For the same reason the permission rule lists are
never replaced by a later layer: every layer's `allow`/`ask`/`deny` rules are kept, so a
project cannot drop a user's `deny` rule (the permission policy decides which rule wins).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


# Command-line options whose names differ from their settings.
_OPTION_NAMES = {"timeout_s": "--timeout", "test_command": "--test"}


class SettingsError(ValueError):
    """A setting has an unknown name or a bad value; the message names its source and key."""


@dataclass
class Settings:
    """Everything that shapes one agent run. Field names are the config keys."""

    model: str | None = None
    """Local checkpoint folder or Hugging Face id of a V4 model."""
    endpoint: str | None = None
    """OpenAI-compatible server URL, used instead of the local engine."""
    api_key: str | None = None
    """Key for `endpoint` (user file or environment only)."""
    thinking: bool = True
    """Generate in thinking mode (reasoning before each answer)."""
    max_steps: int = 50
    """Model turns before the run stops with 'limit reached'."""
    timeout_s: float = 1800.0
    """Wall-clock limit for the whole run, in seconds."""
    max_tokens_per_turn: int | None = None
    """Cap on generated tokens in one model turn (None: the backend's default)."""
    max_total_tokens: int | None = None
    """Cap on generated tokens over the whole run (None: no cap)."""
    test_command: str | None = None
    """Shell command that runs the tests (None: detect it from the repository)."""
    allow: list[str] = field(default_factory=list)
    """Permission rules allowed without asking: "bash(make *)" (a shell-style glob on the
    command line) or "path(docs/*)" (a glob on the repository-relative path)."""
    ask: list[str] = field(default_factory=list)
    """Permission rules that always ask first (same syntax)."""
    deny: list[str] = field(default_factory=list)
    """Permission rules that are always refused (same syntax)."""
    yes: bool = False
    """Never prompt: an action that would ask is denied unless an allow rule covers it."""
    ci: bool = False
    """Non-interactive CI mode: never prompt, plain output."""
    commit: bool = False
    """Commit the fix to the current branch when the tests pass."""
    budget: int | None = None
    """Token budget for the packed repository context (None: fit the model's context)."""
    seed: int | None = None
    """Sampling seed, for reproducible runs."""
    origin: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    """Where each non-default value came from (a file path, an env var, or "flag")."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "timeout_s", "max_tokens_per_turn", "max_total_tokens", "budget"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                where = self.origin.get(name, "settings")
                if where == "flag":  # name the option the user typed
                    where = _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
                raise SettingsError(f"{where}: {name} must be positive, got {value}")

    # The rule lists split by target, in the permission policy's terms.
    @property
    def allow_commands(self) -> list[str]:
        return _patterns(self.allow, "commands")

    @property
    def ask_commands(self) -> list[str]:
        return _patterns(self.ask, "commands")

    @property
    def deny_commands(self) -> list[str]:
        return _patterns(self.deny, "commands")

    @property
    def allow_paths(self) -> list[str]:
        return _patterns(self.allow, "paths")

    @property
    def ask_paths(self) -> list[str]:
        return _patterns(self.ask, "paths")

    @property
    def deny_paths(self) -> list[str]:
        return _patterns(self.deny, "paths")


# `bash(git push*)` / `command(...)` are command rules, `path(secrets/*)` path rules.
_RULE = re.compile(r"(bash|command|path)\((.+)\)", re.DOTALL)


def parse_rule(rule: str) -> tuple[str, str] | None:
    """("commands" | "paths", pattern) for a rule string, or None when it is malformed."""
    match = _RULE.fullmatch(rule.strip())
    if match is None or not match.group(2).strip():
        return None
    target = "paths" if match.group(1) == "path" else "commands"
    return target, match.group(2).strip()


def _patterns(rules: list[str], target: str) -> list[str]:
    patterns = []
    for rule in rules:
        parsed = parse_rule(rule)
        if parsed is not None and parsed[0] == target:
            patterns.append(parsed[1])
    return patterns


RULE_LISTS = ("allow", "ask", "deny")
PROJECT_FORBIDDEN = ("api_key", "yes")
# Sub-tables other parts of dsv4 read themselves (`[hook]`: the pre-commit hook).
OTHER_SECTIONS = ("hook",)
_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "origin"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def load_settings(
    root: Path, flags: Mapping[str, Any], env: Mapping[str, str] = os.environ
) -> Settings:
    """Settings for a run in `root`. `flags` maps field names to values; None means unset."""
    layers = [
        _user_layer(env),
        _project_layer(Path(root)),
        _env_layer(env),
        _flag_layer(flags),
    ]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer_values, layer_origin in layers:
        for key, value in layer_values.items():
            values[key] = values.get(key, []) + value if key in RULE_LISTS else value
            origin[key] = layer_origin[key]
    return Settings(**values, origin=origin)


Layer = tuple[dict[str, Any], dict[str, str]]


def user_config_path(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "dsv4" / "config.toml"


def _user_layer(env: Mapping[str, str]) -> Layer:
    path = user_config_path(env)
    return _file_layer(path, _read_toml(path)) if path.is_file() else ({}, {})


def _project_layer(root: Path) -> Layer:
    dotfile = root / ".dsv4.toml"
    if dotfile.is_file():
        return _file_layer(dotfile, _read_toml(dotfile), project=True)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("dsv4")
        if table is not None:
            if not isinstance(table, dict):
                raise SettingsError(f"{pyproject}: [tool.dsv4] must be a table")
            return _file_layer(pyproject, table, project=True, prefix="tool.dsv4.")
    return {}, {}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from exc
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read ({exc.strerror})") from exc


def _file_layer(
    path: Path, table: Mapping[str, Any], project: bool = False, prefix: str = ""
) -> Layer:
    values: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        where = f"{path}: {prefix}{raw_key}"
        if key in OTHER_SECTIONS:
            continue
        if key not in _FIELDS:
            raise SettingsError(f"{where}: unknown setting; known: {', '.join(_FIELDS)}")
        if project and key in PROJECT_FORBIDDEN:
            raise SettingsError(
                f"{where}: cannot be set in a project file (it travels with the repository); "
                f"use DSV4_{key.upper()} or {user_config_path()}"
            )
        values[key] = _check_type(key, value, where)
    return values, {key: str(path) for key in values}


def _env_layer(env: Mapping[str, str]) -> Layer:
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in _FIELDS:
        name = f"DSV4_{key.upper()}"
        if env.get(name, "") != "":
            values[key] = _parse_env(key, env[name], name)
            origin[key] = name
    return values, origin


def _flag_layer(flags: Mapping[str, Any]) -> Layer:
    values: dict[str, Any] = {}
    for key, value in flags.items():
        if key not in _FIELDS:
            raise SettingsError(f"flag {key!r}: unknown setting; known: {', '.join(_FIELDS)}")
        if value is not None:
            values[key] = _check_type(key, value, f"flag --{key.replace('_', '-')}")
    return values, dict.fromkeys(values, "flag")


def _kind(key: str) -> str:
    """'bool', 'int', 'float', 'str' or 'list' for a field (from its annotation text)."""
    annotation = str(_FIELDS[key].type)
    for kind in ("bool", "int", "float", "list", "str"):
        if annotation.startswith(kind):
            return kind
    raise AssertionError(f"unhandled settings type {annotation} for {key}")


def _parse_env(key: str, text: str, name: str) -> Any:
    kind = _kind(key)
    try:
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError
            return lowered in _TRUE
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected {_describe(kind)}") from None
    if kind == "list":
        rules = [item.strip() for item in text.split(",") if item.strip()]
        _check_rules(rules, name)
        return rules
    return text


def _check_rules(rules: list[str], where: str) -> None:
    for rule in rules:
        if parse_rule(rule) is None:
            raise SettingsError(
                f"{where}: bad permission rule {rule!r}; "
                'write "bash(<command glob>)" or "path(<path glob>)"'
            )


def _check_type(key: str, value: Any, where: str) -> Any:
    kind = _kind(key)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise SettingsError(f"{where}: expected {_describe(kind)}, got {value!r}")
    if key in RULE_LISTS:
        _check_rules(value, where)
    return float(value) if kind == "float" else list(value) if kind == "list" else value


def _describe(kind: str) -> str:
    return {
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "list": "a list of strings (comma-separated in the environment)",
    }[kind]
