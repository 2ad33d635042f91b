"""Patterns of credentials and tokens that must never appear in the repository or in logs."""

from __future__ import annotations

import re

SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    # A literal value assigned to a password, secret or token field; `password = None`,
    # `password=$VAR` and `password: ${VAR}` are references, not literals.
    "literal password": re.compile(r"""(?i)\b(password|passwd|secret|api_key|token)["']?\s*[=:]\s*["'](?!\$)[^"'\s]{4,}["']"""),
    "password in URL": re.compile(r"://[^/\s:@]+:[^/\s:@]{3,}@"),
}


def find_secrets(text: str) -> list[str]:
    """Return 'name: match' for every pattern that matches text."""
    found = []
    for name, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            found.append(f"{name}: {match.group(0)[:40]}")
    return found
