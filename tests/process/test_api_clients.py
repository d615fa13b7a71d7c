"""The documented clients in other languages, run against a live server and a worker:
the curl script and the Node snippet of docs/howto/examples/."""

import json
import shutil
import subprocess

import pytest

from django_jobs.api.auth import digest
from django_jobs.models import ApiToken
from django_jobs.webhooks import signing

from ..conftest import ROOT

EXAMPLES = ROOT / "docs" / "howto" / "examples"
TOKEN = "djj_docs-example-token-0123456789abcdefghij"


@pytest.fixture
def api(live_server, start_worker):
    ApiToken.objects.create(
        name="docs", prefix=TOKEN[:10], digest=digest(TOKEN), tasks=["*"], can_enqueue=True
    )
    worker = start_worker("--concurrency", "1")
    yield {"JOBS_API": f"{live_server.url}/jobs-api", "JOBS_TOKEN": TOKEN}
    worker.popen.terminate()


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl, jq")
def test_the_curl_script_enqueues_and_reads_the_result(api):
    done = run(["bash", str(EXAMPLES / "jobs-api.sh")], api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: 5" in done.stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_node_client_enqueues_waits_and_verifies_webhooks(api):
    done = run(["node", str(EXAMPLES / "jobs-client.mjs")], api)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["return_value"] == 5

    body = b'{"type":"job.finished","data":{"id":"1"}}'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = signing.headers([secret], "msg_1", body)
    check = f"""
import {{ verifyWebhook }} from "{EXAMPLES / "jobs-client.mjs"}";
const headers = {json.dumps(headers)};
const body = {json.dumps(body.decode())};
console.log(verifyWebhook("{secret}", headers, body),
            verifyWebhook("{secret}", headers, body + " "),
            verifyWebhook("whsec_AAAA", headers, body));
"""
    done = run(["node", "--input-type=module", "-e", check], {})
    assert done.stdout.split() == ["true", "false", "false"], done.stderr
