// A small client for the django_jobs HTTP API, and a webhook verifier (Node 18+, no
// dependencies). Run: JOBS_API=https://example.com/jobs-api JOBS_TOKEN=djj_... node jobs-client.mjs
import { createHmac, timingSafeEqual } from "node:crypto";

export class JobsClient {
  constructor(base, token) {
    this.base = base.replace(/\/$/, "");
    this.token = token;
  }

  async request(method, path, body) {
    const response = await fetch(this.base + path, {
      method,
      headers: {
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) {
      // Every error is {"error": {"code": ..., "message": ...}}.
      const error = new Error(`${response.status} ${answer.error.code}: ${answer.error.message}`);
      error.code = answer.error.code;
      throw error;
    }
    return answer;
  }

  enqueue(task, args = [], kwargs = {}, options = {}) {
    return this.request("POST", "/jobs/", { task, args, kwargs, ...options });
  }

  get(id) {
    return this.request("GET", `/jobs/${id}/`);
  }

  cancel(id) {
    return this.request("POST", `/jobs/${id}/cancel/`);
  }

  async wait(id, { every = 1000, timeout = 60000 } = {}) {
    for (const end = Date.now() + timeout; Date.now() < end; ) {
      const job = await this.get(id);
      if (["SUCCESSFUL", "FAILED", "CANCELLED"].includes(job.state)) return job;
      await new Promise((resolve) => setTimeout(resolve, every));
    }
    throw new Error(`job ${id} has not finished after ${timeout} ms`);
  }
}

// Check a webhook's Standard Webhooks signature (webhook-id, webhook-timestamp,
// webhook-signature headers) against the raw body, as bytes or a string.
export function verifyWebhook(secret, headers, body, toleranceSeconds = 300) {
  const id = headers["webhook-id"];
  const timestamp = Number(headers["webhook-timestamp"]);
  if (!id || !Number.isInteger(timestamp)) return false;
  if (Math.abs(Date.now() / 1000 - timestamp) > toleranceSeconds) return false;
  const key = secret.startsWith("whsec_")
    ? Buffer.from(secret.slice("whsec_".length), "base64")
    : Buffer.from(secret, "utf8");
  const expected = Buffer.from(
    "v1," + createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64"),
  );
  return (headers["webhook-signature"] || "").split(" ").some((candidate) => {
    const offered = Buffer.from(candidate);
    return offered.length === expected.length && timingSafeEqual(offered, expected);
  });
}

// Run as a script: enqueue add(2, 3) and print the finished job.
if (import.meta.url === `file://${process.argv[1]}`) {
  const client = new JobsClient(process.env.JOBS_API, process.env.JOBS_TOKEN);
  const job = await client.enqueue("testproject.example.tasks.add", [2, 3]);
  console.log(`enqueued job ${job.id}`);
  const done = await client.wait(job.id, { every: 200 });
  console.log(JSON.stringify({ id: done.id, state: done.state, return_value: done.return_value }));
}
