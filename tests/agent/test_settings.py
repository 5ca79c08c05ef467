"""Settings: defaults, layer precedence, permission-rule merging and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4.agent.settings import Settings, SettingsError, load_settings


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty user config folder (never the real home)."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


def user_file(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "dsv4" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


def test_defaults(root: Path, env: dict[str, str]) -> None:
    settings = load_settings(root, {}, env=env)
    assert settings == Settings()
    assert (settings.thinking, settings.max_steps, settings.timeout_s) == (True, 50, 1800.0)
    assert (settings.commit, settings.yes, settings.model) == (False, False, None)
    assert settings.origin == {}


def test_precedence_flag_env_project_user(root: Path, env: dict[str, str]) -> None:
    user = user_file(env, 'model = "user-model"\nmax_steps = 10\nseed = 1\ntimeout_s = 60\n')
    (root / ".dsv4.toml").write_text('model = "project-model"\nmax-steps = 20\nseed = 2\n')
    env |= {"DSV4_MAX_STEPS": "30", "DSV4_SEED": "3"}
    settings = load_settings(root, {"seed": 4, "model": None}, env=env)
    assert settings.timeout_s == 60.0  # only the user file sets it
    assert settings.model == "project-model"  # the flag was None: not given
    assert settings.max_steps == 30
    assert settings.seed == 4
    assert settings.origin == {
        "timeout_s": str(user),
        "model": str(root / ".dsv4.toml"),
        "max_steps": "DSV4_MAX_STEPS",
        "seed": "flag",
    }


def test_pyproject_tool_table(root: Path, env: dict[str, str]) -> None:
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.dsv4]\ntest-command = "pytest -x"\nthinking = false\n'
    )
    settings = load_settings(root, {}, env=env)
    assert settings.test_command == "pytest -x" and settings.thinking is False


def test_dsv4_toml_wins_over_pyproject(root: Path, env: dict[str, str]) -> None:
    (root / "pyproject.toml").write_text('[tool.dsv4]\nmodel = "from-pyproject"\n')
    (root / ".dsv4.toml").write_text('model = "from-dotfile"\n')
    assert load_settings(root, {}, env=env).model == "from-dotfile"


def test_rule_lists_accumulate_across_layers(root: Path, env: dict[str, str]) -> None:
    user_file(env, 'deny = ["bash(rm -rf *)"]\n')
    (root / ".dsv4.toml").write_text('allow = ["bash(make lint)"]\ndeny = []\n')
    env["DSV4_ASK"] = "bash(git push*), path(secrets/*)"
    settings = load_settings(root, {"allow": ["path(docs/*)"]}, env=env)
    assert settings.deny == ["bash(rm -rf *)"], "a project cannot drop the user's deny rules"
    assert settings.allow == ["bash(make lint)", "path(docs/*)"]
    assert settings.ask == ["bash(git push*)", "path(secrets/*)"]


def test_rules_split_into_command_and_path_patterns() -> None:
    settings = Settings(
        allow=["bash(make *)", "command( npm run lint )", "path(docs/**)"],
        ask=["path(*.lock)"],
        deny=["bash(git push --force*)"],
    )
    assert settings.allow_commands == ["make *", "npm run lint"]
    assert settings.allow_paths == ["docs/**"]
    assert (settings.ask_commands, settings.ask_paths) == ([], ["*.lock"])
    assert (settings.deny_commands, settings.deny_paths) == (["git push --force*"], [])


@pytest.mark.parametrize("rule", ["read", "bash()", "bash(make", "shell(ls)"])
def test_malformed_rules_are_rejected(root: Path, env: dict[str, str], rule: str) -> None:
    (root / ".dsv4.toml").write_text(f"deny = [{rule!r}]\n")
    with pytest.raises(SettingsError, match=r"\.dsv4\.toml: deny: bad permission rule"):
        load_settings(root, {}, env=env)
    with pytest.raises(SettingsError, match="DSV4_ALLOW: bad permission rule"):
        load_settings(root / "missing", {}, env=env | {"DSV4_ALLOW": rule})


def test_env_values_are_parsed(root: Path, env: dict[str, str]) -> None:
    env |= {"DSV4_THINKING": "off", "DSV4_CI": "1", "DSV4_TIMEOUT_S": "2.5", "DSV4_MODEL": ""}
    settings = load_settings(root, {}, env=env)
    assert (settings.thinking, settings.ci, settings.timeout_s) == (False, True, 2.5)
    assert settings.model is None, "an empty variable counts as unset"


def test_unknown_key_names_file_and_key(root: Path, env: dict[str, str]) -> None:
    (root / ".dsv4.toml").write_text("max_stepz = 3\n")
    with pytest.raises(
        SettingsError, match=r"\.dsv4\.toml: max_stepz: unknown setting; known: model"
    ):
        load_settings(root, {}, env=env)
    (root / ".dsv4.toml").unlink()
    (root / "pyproject.toml").write_text("[tool.dsv4]\nmodle = 'x'\n")
    with pytest.raises(SettingsError, match=r"pyproject\.toml: tool\.dsv4\.modle: unknown"):
        load_settings(root, {}, env=env)


def test_bad_values_name_their_source(root: Path, env: dict[str, str]) -> None:
    path = user_file(env, 'max_steps = "many"\n')
    with pytest.raises(SettingsError, match=rf"{path}: max_steps: expected an integer"):
        load_settings(root, {}, env=env)
    path.unlink()
    with pytest.raises(SettingsError, match=r"DSV4_MAX_STEPS='ten': expected an integer"):
        load_settings(root, {}, env=env | {"DSV4_MAX_STEPS": "ten"})
    with pytest.raises(SettingsError, match=r"DSV4_YES='maybe': expected true or false"):
        load_settings(root, {}, env=env | {"DSV4_YES": "maybe"})
    with pytest.raises(SettingsError, match=r"flag --thinking: expected true or false"):
        load_settings(root, {"thinking": "yes"}, env=env)
    with pytest.raises(SettingsError, match=r"flag 'bogus': unknown setting"):
        load_settings(root, {"bogus": 1}, env=env)
    with pytest.raises(SettingsError, match=r"allow: expected a list of strings"):
        load_settings(root, {"allow": "bash(ls)"}, env=env)


def test_range_errors_name_their_source(root: Path, env: dict[str, str]) -> None:
    (root / ".dsv4.toml").write_text("max_steps = 0\n")
    with pytest.raises(SettingsError, match=r"\.dsv4\.toml: max_steps must be positive, got 0"):
        load_settings(root, {}, env=env)


def test_invalid_toml_names_the_file(root: Path, env: dict[str, str]) -> None:
    (root / ".dsv4.toml").write_text("model = \n")
    with pytest.raises(SettingsError, match=r"\.dsv4\.toml: not valid TOML"):
        load_settings(root, {}, env=env)


@pytest.mark.parametrize(
    ("line", "key", "value"),
    [('api_key = "sk-123"', "api_key", "sk-123"), ("yes = true", "yes", True)],
)
def test_project_files_cannot_grant_secrets_or_consent(
    root: Path, env: dict[str, str], line: str, key: str, value: object
) -> None:
    (root / ".dsv4.toml").write_text(line + "\n")
    with pytest.raises(SettingsError, match="cannot be set in a project file"):
        load_settings(root, {}, env=env)
    user_file(env, line + "\n")
    (root / ".dsv4.toml").unlink()
    assert getattr(load_settings(root, {}, env=env), key) == value, "the user file may set it"
