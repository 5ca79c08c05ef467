"""Secret detection in both directions: planted secrets are caught, look-alikes are kept."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv4.agent import secrets
from dsv4.agent.secrets import looks_random, redact, shannon_entropy, withheld_reason

# Assembled from parts so the test file itself does not trip secret scanners.
_AWS_ID = "AKIA" + "Q7ZP3LMX9TKW4RNB"
_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCY9q8Zr2Lm4X"  # 40 characters
_GH = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
_SLACK = "xoxb-" + "2048-7391-q8Zr2Lm9Xv4Tn"
_GOOGLE = "AIza" + "SyD3-q8Zr2Lm9Xv4Tn7Pw1Ks6Ab5Cd0Ef9G"
_STRIPE = "sk_live_" + "q8Zr2Lm9Xv4Tn7Pw1Ks6Ab5C"
_OPENAI = "sk-proj-" + "q8Zr2Lm9Xv4Tn7Pw1Ks6Ab5Cd0Ef9Gh3Ij"
_GITLAB = "glpat-" + "q8Zr2Lm9Xv4Tn7Pw1Ks6"
_RANDOM = "q8Zr2Lm9Xv4Tn7Pw1Ks6"
_PEM_BODY = "MIIEowIBAAKCAQEAq8Zr2Lm9Xv4Tn7Pw1Ks6Ab5Cd0Ef9Gh3Ij"


@pytest.mark.parametrize(
    ("source", "secret", "kind"),
    [
        (f'KEY_ID = "{_AWS_ID}"\n', _AWS_ID, "aws-access-key-id"),
        (f"aws_secret_access_key = {_AWS_SECRET}\n", _AWS_SECRET, "aws-secret-access-key"),
        (f'client = Github("{_GH}")\n', _GH, "github-token"),
        (f"SLACK = '{_SLACK}'\n", _SLACK, "slack-token"),
        (f'maps(key="{_GOOGLE}")\n', _GOOGLE, "google-api-key"),
        (f'stripe.api_key = "{_STRIPE}"\n', _STRIPE, "stripe-key"),
        (f'OpenAI(api_key="{_OPENAI}")\n', _OPENAI, "openai-anthropic-key"),
        (f"token: {_GITLAB}\n", _GITLAB, "gitlab-token"),
        (f'DB = "postgresql://app:{_RANDOM}@db.internal:5432/prod"\n', _RANDOM, "url-credentials"),
        (f'db_password = "{_RANDOM}"\n', _RANDOM, "secret-assignment"),
        (f"    'auth_token': '{_RANDOM}',\n", _RANDOM, "secret-assignment"),
        (f"export API_SECRET={_RANDOM}\n", _RANDOM, "secret-assignment"),
        (
            f"KEY = '''\n-----BEGIN RSA PRIVATE KEY-----\n{_PEM_BODY}\n"
            "-----END RSA PRIVATE KEY-----\n'''\n",
            _PEM_BODY,
            "private-key",
        ),
    ],
)
def test_each_pattern_is_redacted_in_place(source: str, secret: str, kind: str) -> None:
    text = f"import os\n\n{source}\ndef keep_me():\n    return 42\n"
    redacted, findings = redact("app/settings.py", text)
    assert secret not in redacted
    assert f"[REDACTED:{kind}]" in redacted
    assert "def keep_me():" in redacted and "import os" in redacted  # the rest is kept
    assert [f.kind for f in findings] == [kind]
    assert findings[0].action == "redacted"
    assert findings[0].line == text[: text.index(secret)].count("\n") + 1


@pytest.mark.parametrize(
    "source",
    [
        # Documentation-style URLs (the sqlalchemy case): placeholder or short passwords.
        'engine = create_engine("postgresql://scott:tiger@localhost/test")\n',
        'url = "mysql+pymysql://user:password@host/dbname"\n',
        'url = "postgresql://user:${DB_PASSWORD}@db/app"\n',
        # Assignments of non-secret values.
        'password = "hunter2"\n',
        "token = os.environ.get('API_TOKEN_FOR_SERVICE_1')\n",
        "secret_key = settings.SECRET_KEY\n",
        'api_key = "your_api_key_here_123456"\n',
        'password = "<password-goes-here-123456>"\n',
        'TOKEN_TYPE = "bearer"\n',
        "def check_password(password: str, hashed: str) -> bool:\n",
        'AWS_EXAMPLE = "AKIAIOSFODNN7EXAMPLE"  # the documented example id\n',
    ],
)
def test_look_alikes_are_not_redacted(source: str) -> None:
    redacted, findings = redact("lib/docs.py", source)
    assert findings == [] and redacted == source


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (".env", "env-file"),
        ("services/api/.env.production", "env-file"),
        ("config/prod.env", "env-file"),
        ("deploy/id_rsa", "key-file"),
        ("certs/server.pem", "key-file"),
        ("keys/release.p12", "key-file"),
        (".netrc", "key-file"),
    ],
)
def test_secret_files_are_withheld_whole(path: str, kind: str) -> None:
    assert withheld_reason(path) == kind


def test_private_key_content_is_withheld_under_any_name() -> None:
    head = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
    assert withheld_reason("deploy/key_backup.txt", head) == "private-key-file"


@pytest.mark.parametrize("path", [".env.example", "app/.env.sample", "settings.py", "environ.md"])
def test_templates_and_sources_are_scanned_not_withheld(path: str) -> None:
    assert withheld_reason(path, "X=1\n") is None


def test_entropy_and_randomness() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)
    assert looks_random(_RANDOM)
    assert not looks_random("short1A")
    assert not looks_random("onlylowercaseletterswithoutdigits")
    assert not looks_random("example_token_1234567890")


@pytest.mark.parametrize("rule", secrets._LINE_RULES, ids=lambda r: r.kind)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_match_of_a_line_rule_holds_one_of_its_triggers(rule, data) -> None:
    """A line rule is skipped on lines without its triggers: sound only if every text the
    rule matches holds one (lower-cased)."""
    text = data.draw(st.from_regex(rule.pattern))
    matches = list(rule.pattern.finditer(text))
    assert matches
    for m in matches:
        assert any(t in m.group().lower() for t in rule.triggers), (rule.kind, m.group())
