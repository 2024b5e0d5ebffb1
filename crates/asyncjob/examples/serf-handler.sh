#!/bin/sh
# A serf event handler that drives a long job through procyard-asyncjob, as the serfx
# AsyncJob example did: serf runs handlers one at a time, so the handler starts the work in
# the background and returns at once; later queries check, kill or reap it.
#
# Install:  serf agent -event-handler "query:bash_test=/path/to/serf-handler.sh"
# Drive:    serf query bash_test start
#           serf query bash_test check   # JSON: running, or finished with its exit status
#           serf query bash_test kill    # stop it (the whole process group)
#           serf query bash_test reap    # delete a finished job's state
#
# Serf gives the query name in SERF_QUERY_NAME and the payload on stdin; whatever the handler
# prints is the query's response. Override the paths with ASYNCJOB_STATE / ASYNCJOB_LOG.
set -u

ASYNCJOB=${ASYNCJOB:-procyard-asyncjob}
STATE=${ASYNCJOB_STATE:-/opt/serf/states/long_task}
LOG=${ASYNCJOB_LOG:-/dev/null}
COMMAND='for i in $(seq 1 300); do echo $i; sleep 1; done'

if [ "${SERF_EVENT:-query}" != "query" ] || [ "${SERF_QUERY_NAME:-bash_test}" != "bash_test" ]; then
    exit 0
fi

payload=$(cat)
case "$payload" in
    start) exec "$ASYNCJOB" --state "$STATE" --stdout "$LOG" start --shell "$COMMAND" ;;
    kill)  exec "$ASYNCJOB" --state "$STATE" kill ;;
    reap)  exec "$ASYNCJOB" --state "$STATE" reap ;;
    check) exec "$ASYNCJOB" --state "$STATE" check ;;
    *)     echo failed ;;
esac
