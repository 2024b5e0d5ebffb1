#!/bin/sh
# A serf event handler that drives a long job through procyard-asyncjob: serf runs handlers
# one at a time, so the handler starts the work in the background and returns at once; later
# queries check, kill or reap it.
#
# Install:  serf agent -event-handler "query:bash_test=/path/to/serf-handler.sh"
# Drive:    serf query bash_test start
#           serf query bash_test check   # JSON: running, or finished with its exit status
#           serf query bash_test kill    # stop it (the whole process group)
#           serf query bash_test reap    # delete a finished job's state
#
# Serf gives the query name in SERF_QUERY_NAME and the payload on stdin; whatever the handler
# prints is the query's response. Two rules of serf shape this script:
#   - serf drops everything a handler printed when the handler exits non-zero (the querier
#     gets no answer at all), so the handler always exits 0 and prints `failed` itself;
#   - serf relays the handler's standard error too, so procyard-asyncjob's reasons go to
#     ASYNCJOB_ERRORS (default /dev/null; name a log file to keep them), never into the answer.
# The answer is `success` or `failed` for start, kill and reap, the state's JSON for check
# (`failed` if the state cannot be read). Override the paths with ASYNCJOB_STATE / ASYNCJOB_LOG.
set -u

ASYNCJOB=${ASYNCJOB:-procyard-asyncjob}
STATE=${ASYNCJOB_STATE:-/opt/serf/states/long_task}
LOG=${ASYNCJOB_LOG:-/dev/null}
ERRORS=${ASYNCJOB_ERRORS:-/dev/null}
COMMAND='for i in $(seq 1 300); do echo $i; sleep 1; done'

if [ "${SERF_EVENT:-query}" != "query" ] || [ "${SERF_QUERY_NAME:-bash_test}" != "bash_test" ]; then
    exit 0
fi

# Runs procyard-asyncjob and prints its answer (`failed` when it printed none); exits 0.
answer() {
    out=$("$ASYNCJOB" --state "$STATE" "$@" 2>>"$ERRORS")
    [ -n "$out" ] || out=failed
    printf '%s\n' "$out"
    exit 0
}

payload=$(cat)
case "$payload" in
    start) answer --stdout "$LOG" start --shell "$COMMAND" ;;
    kill)  answer kill ;;
    reap)  answer reap ;;
    check) answer check ;;
    *)     echo failed ;;
esac
exit 0
