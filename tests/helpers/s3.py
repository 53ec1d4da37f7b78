"""A local S3-compatible server (moto's server mode) for the object-store tests, and the environment that
points pyarrow and boto3 at it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import boto3

from tests.helpers.ray_procs import free_port


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[tuple[dict[str, str], object]]:
    """``(env, client)``: the ``AWS_*`` variables of a fresh server holding an empty ``bucket``, and a boto3
    client of it. The server stops on exit."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "prism-test",
           "AWS_SECRET_ACCESS_KEY": "prism-test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="prism-test", aws_secret_access_key="prism-test")
        client.create_bucket(Bucket=bucket)
        yield env, client
    finally:
        server.stop()
