"""No credentials in the repository: every tracked file is scanned by detect-secrets with the plugins and filters of
the committed `.secrets.baseline`, and nothing may be found beyond what that baseline lists (it lists nothing; a
false positive is marked where it stands with `# pragma: allowlist secret`). Refresh the baseline after changing
detect-secrets' settings with `detect-secrets scan --baseline .secrets.baseline $(git ls-files)`.
"""

import subprocess
from pathlib import Path

import pytest
from detect_secrets import SecretsCollection
from detect_secrets.core import baseline
from detect_secrets.settings import transient_settings

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".secrets.baseline"
SKIP_DIRS = {".git", ".venv", "runs", "build", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _tracked_files() -> list[str]:
    """`git ls-files` (a clean clone's content); without git, every file outside build and run directories."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]
    return [f for f in files if (ROOT / f).is_file()]


def _scan(config: dict, root: Path, files: list[str]) -> SecretsCollection:
    with transient_settings(config):
        found = SecretsCollection(root=str(root))
        found.scan_files(*files, num_processors=1)
    return found


def test_repository_holds_no_secrets_beyond_the_baseline():
    config = baseline.load_from_file(str(BASELINE))
    files = _tracked_files()
    assert len(files) > 100 and ".secrets.baseline" in files or not (ROOT / ".git").exists()
    new = _scan(config, ROOT, files) - baseline.load(config, str(BASELINE))
    hits = [f"{name}:{secret.line_number}: {secret.type}" for name, secret in new]
    assert not hits, "secrets in the repository (remove them, or mark a false positive with " \
                     "`# pragma: allowlist secret`):\n" + "\n".join(hits)


# Built from pieces at run time, so that this file holds no secret-shaped literal.
PLANTED = {
    "AWS access key": "aws_access_key_id = " + "AKIA" + "IOSFODNN7EXAMPLE",
    "private key": "-----BEGIN " + "OPENSSH PRIVATE" + " KEY-----",
    "GitHub token": "GITHUB_TOKEN=gh" + "p_" + "x9Ab" * 9,
    "Slack token": "slack: xox" + "b-" + "1234567890-abcdefghij",
    "password": "password: " + "hunter2" + "hunter2",  # pragma: allowlist secret
    "tracking password": "MLFLOW_TRACKING_PASSWORD=" + "s3cr3t-V4lue",  # pragma: allowlist secret
    "API key": "api_key = '" + "Zx81kdLq0pW2" + "'",
    "Ray token in a config": ("RAY_AUTH_TOKEN: " + "9f86d081884c7d659a2feaa0"  # pragma: allowlist secret
                              + "c55ad015a3bf4f1b2b0b822cd15d6c15"),  # pragma: allowlist secret
}


@pytest.mark.parametrize("kind", PLANTED)
def test_a_planted_secret_is_found(tmp_path, kind):
    (tmp_path / "setup.sh").write_text(f"# node set-up\n{PLANTED[kind]}\n")
    found = _scan(baseline.load_from_file(str(BASELINE)), tmp_path, ["setup.sh"])
    assert {s.line_number for _, s in found} == {2}, kind


@pytest.mark.parametrize("text", [
    "secretKeyRef: {name: mlflow-credentials, key: password, optional: true}",
    "MLFLOW_TRACKING_PASSWORD=$(aws secretsmanager get-secret-value --secret-id dbae/mlflow)",
    "RAY_AUTH_TOKEN_PATH=~/.ray/auth_token",
    "token: ${RAY_AUTH_TOKEN}",
    "ulimit -n 65536; RAY_AUTH_MODE=token ray start --head",
])
def test_references_to_secrets_are_not_secrets(tmp_path, text):
    (tmp_path / "cluster.yaml").write_text(text + "\n")
    assert not _scan(baseline.load_from_file(str(BASELINE)), tmp_path, ["cluster.yaml"])
