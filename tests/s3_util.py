"""An S3-compatible server for the state tests: moto's server mode on 127.0.0.1.

The server runs in a child process (one per test session, started on first use) so that
``tracemalloc`` in the memory tests measures bpsync alone, not the server keeping every object
in memory, and so that lock tests really race several processes over HTTP. The child exits when
its stdin closes, so it cannot outlive the test run even if pytest is killed.

Every test gets a bucket of its own; credentials are dummies set in the environment.
"""

from __future__ import annotations

import atexit
import itertools
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

try:
    import boto3
    import moto.server  # noqa: F401 - only checks that moto[server] is installed
except ImportError:  # pragma: no cover - depends on the environment
    SKIP_REASON: str | None = (
        "the S3 backend tests need boto3 and moto[server]: pip install boto3 'moto[server]'"
    )
else:
    SKIP_REASON = None

REGION = "us-east-1"

_SERVER = """
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # until the test run closes our stdin
server.stop()
"""

_server: subprocess.Popen[str] | None = None
_url = ""
_buckets = itertools.count(1)


def _stop() -> None:
    global _server
    if _server is None:
        return
    proc, _server = _server, None
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def server_url() -> str:
    """The URL of the session's moto server (http://127.0.0.1:<port>), started on first use."""
    global _server, _url
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    if _server is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the moto server did not start (said {url!r})")
        _server, _url = proc, url
        atexit.register(_stop)
    return _url


stop_server = _stop


def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, and nothing from the real AWS configuration of this machine."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


_clients: dict[str, Any] = {}


def client(url: str) -> Any:
    """A plain boto3 client on the test server, with the dummy credentials."""
    if url not in _clients:
        _clients[url] = boto3.client(
            "s3",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
    return _clients[url]


def new_bucket(url: str) -> str:
    name = f"bpsync-test-{next(_buckets)}-{uuid.uuid4().hex[:8]}"
    client(url).create_bucket(Bucket=name)
    return name


def state_config(url: str, bucket: str, prefix: str = "team/state") -> Any:
    from bpsync.config import StateConfig

    return StateConfig(backend="s3", bucket=bucket, prefix=prefix, region=REGION, endpoint_url=url)


def make_backend(monkeypatch: pytest.MonkeyPatch, prefix: str = "team/state") -> Any:
    """An S3Backend on a fresh bucket of the session's server."""
    from bpsync.state.s3 import S3Backend

    url = server_url()
    aws_env(monkeypatch)
    return S3Backend.from_config(state_config(url, new_bucket(url), prefix))
