"""Secrets in the settings: the development key is refused off loopback, nothing prints a secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cluster.config import (
    DEV_SECRET,
    InsecureSettings,
    Settings,
    check_secret,
    is_loopback,
    redact_url,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@db.example:6380/1", "redis://:***@db.example:6380/1"),
        ("rediss://app:hunter2@db.example:6380/0", "rediss://app:***@db.example:6380/0"),
        ("redis://hunter2@db.example/0", "redis://***@db.example/0"),
        (
            "redis://db.example:6379/0?password=hunter2&ssl=1",
            "redis://db.example:6379/0?password=%2A%2A%2A&ssl=1",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("", ""),
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url, shown):
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("no-such-host.invalid", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_default_secret_is_refused_off_loopback_and_warned_about_on_it():
    with pytest.raises(InsecureSettings, match="LIFELINE_SECRET"):
        check_secret(Settings(host="0.0.0.0", secret=DEV_SECRET))
    with pytest.raises(InsecureSettings, match="empty"):
        check_secret(Settings(host="0.0.0.0", secret=""))
    warning = check_secret(Settings(host="127.0.0.1", secret=DEV_SECRET))
    assert warning and "forged" in warning
    assert check_secret(Settings(host="0.0.0.0", secret="a-key-of-the-operators-own")) is None


def test_settings_reach_a_child_through_its_environment():
    s = Settings(redis_url="redis://:pw@h:1/0", secret="k", prefix="p:")
    env = s.to_env()
    assert env["REDIS_URL"] == "redis://:pw@h:1/0" and env["LIFELINE_SECRET"] == "k"
    assert env["LIFELINE_PREFIX"] == "p:"


def test_lifeline_config_prints_no_secret():
    secret, key, password = (uuid.uuid4().hex for _ in range(3))
    env = dict(
        os.environ,
        LIFELINE_SECRET=secret,
        ANTHROPIC_API_KEY=key,
        REDIS_URL=f"redis://:{password}@db.example:6379/0",
    )
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for value in (secret, key, password):
        assert value not in out.stdout
    assert "redis://:***@db.example:6379/0" in out.stdout
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "(set)" in rows["LIFELINE_SECRET"] and "(set)" in rows["ANTHROPIC_API_KEY"]


def test_lifeline_config_shows_an_unset_key_as_not_set():
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "LIFELINE_SECRET")}
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "(not set)" in rows["ANTHROPIC_API_KEY"]
    assert "(development default)" in rows["LIFELINE_SECRET"]


def test_lifeline_up_refuses_the_default_secret_when_others_can_connect(redis_url):
    # The real command, reachable from other machines, with no LIFELINE_SECRET: it must
    # stop at once with a clear message and a non-zero exit, before starting anything.
    env = dict(
        os.environ,
        LIFELINE_HOST="0.0.0.0",
        REDIS_URL=redis_url,
        LIFELINE_PREFIX=f"lltest-secret-{uuid.uuid4().hex[:8]}:",
    )
    for name in ("LIFELINE_SECRET", "RAY_ADDRESS"):
        env.pop(name, None)
    up = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "up", "--no-serve", "--ws-port", "0"]
        + ["--http-port", "0", "--console-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:  # it started serving instead: stop it cleanly
            up.send_signal(signal.SIGINT)
            up.communicate(timeout=90)
    assert up.returncode == 2, out + err
    assert "refusing to start" in err and "LIFELINE_SECRET" in err
    assert "Lifeline is running" not in out
