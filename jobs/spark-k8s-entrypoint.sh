#!/usr/bin/env bash
# The command of streamdrift's Spark executor pods on Kubernetes (deploy/k8s/spark-streaming.yaml
# sets it in the executor pod template). Spark starts each executor container with the single
# argument `executor` and describes the executor in environment variables (SPARK_DRIVER_URL,
# SPARK_EXECUTOR_ID, SPARK_EXECUTOR_CORES, SPARK_EXECUTOR_MEMORY, SPARK_APPLICATION_ID,
# SPARK_EXECUTOR_POD_IP, SPARK_EXECUTOR_POD_NAME, SPARK_RESOURCE_PROFILE_ID, and the JVM options
# as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ...). This script starts Spark's Kubernetes executor
# backend with them, from the jars of the pyspark package installed in the image (the pyspark
# wheel has no entrypoint of its own). Anything else is passed to spark-submit.
set -euo pipefail

if [[ "${1:-}" != "executor" ]]; then
  exec spark-submit "$@"
fi

python="${PYSPARK_PYTHON:-python3}"
spark_home="${SPARK_HOME:-$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"

# the JVM options, in the order of their numbers
java_opts=()
for i in $(env | sed -n 's/^SPARK_JAVA_OPT_\([0-9][0-9]*\)=.*/\1/p' | sort -n); do
  name="SPARK_JAVA_OPT_$i"
  java_opts+=("${!name}")
done

exec "${JAVA_HOME:+$JAVA_HOME/bin/}java" "${java_opts[@]}" \
  -Xms"$SPARK_EXECUTOR_MEMORY" -Xmx"$SPARK_EXECUTOR_MEMORY" \
  -cp "$spark_home/jars/*" \
  org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
  --driver-url "$SPARK_DRIVER_URL" \
  --executor-id "$SPARK_EXECUTOR_ID" \
  --cores "$SPARK_EXECUTOR_CORES" \
  --app-id "$SPARK_APPLICATION_ID" \
  --hostname "$SPARK_EXECUTOR_POD_IP" \
  --resourceProfileId "$SPARK_RESOURCE_PROFILE_ID" \
  --podName "$SPARK_EXECUTOR_POD_NAME"
