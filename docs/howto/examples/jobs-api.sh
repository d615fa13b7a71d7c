#!/usr/bin/env bash
# Enqueue a job over the django_jobs HTTP API, then wait for its result.
#   JOBS_API=https://example.com/jobs-api JOBS_TOKEN=djj_... ./jobs-api.sh
# Needs curl and jq.
set -euo pipefail
api="${JOBS_API:?set JOBS_API to where django_jobs.api.urls is mounted}"
auth="Authorization: Bearer ${JOBS_TOKEN:?set JOBS_TOKEN to an API token}"

# Enqueue: 201 and the job, or an error such as
# {"error": {"code": "invalid_arguments", "message": "The arguments do not fit ..."}}
job=$(curl --silent --show-error --fail-with-body -X POST "$api/jobs/" \
    -H "$auth" -H "Content-Type: application/json" \
    -d '{"task": "testproject.example.tasks.add", "args": [2, 3]}')
id=$(jq -r .id <<<"$job")
echo "enqueued job $id"

# Poll until it has finished (a callback_url saves the polling: see Webhooks).
for _ in $(seq 1 "${JOBS_POLLS:-60}"); do
    job=$(curl --silent --show-error --fail-with-body "$api/jobs/$id/" -H "$auth")
    state=$(jq -r .state <<<"$job")
    case "$state" in
        SUCCESSFUL) echo "result: $(jq -c .return_value <<<"$job")"; exit 0 ;;
        FAILED | CANCELLED) echo "job $id ended $state: $(jq -c .errors <<<"$job")"; exit 1 ;;
    esac
    sleep 1
done
echo "job $id still $state" >&2
exit 2
