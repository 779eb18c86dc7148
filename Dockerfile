# One image for the operator and every workload (`neuraxis operator`, `neuraxis workload ...`).
# CI/CD with a container engine builds it from this file; the development machines have no
# engine and assemble the same image offline with `neuraxis dev image build`
# (neuraxis/dev/image.py). tests/test_image.py checks that both describe the same image: base
# suite, packages, user, working directory, environment, entrypoint and command.
# BuildKit is needed (RUN --mount).
FROM debian:bookworm-slim

# Debian's Python runs the venv; Spark needs a JRE 17; tini reaps Spark's and torchrun's child
# processes; CA certificates for the lake's TLS endpoints.
RUN apt-get update \
    && apt-get install -y -q --no-install-recommends python3.11 openjdk-17-jre-headless tini ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/*.log

# Non-root, matching the pods' runAsUser; the root file system is mounted read-only in pods.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin neuraxis

# The locked dependencies in /opt/venv on Debian's python3.11, byte-compiled with hash-checked
# .pyc files (pods never compile: their root is read-only).
COPY requirements.lock /tmp/requirements.lock
RUN --mount=from=ghcr.io/astral-sh/uv:0.13.8,source=/uv,target=/usr/local/bin/uv \
    uv venv --no-config --no-project --python /usr/bin/python3.11 /opt/venv \
    && uv pip sync --no-config --no-cache --python /opt/venv/bin/python /tmp/requirements.lock \
    && (python3.11 -m compileall -q -j 0 --invalidation-mode checked-hash /opt/venv/lib/python3.11/site-packages || true) \
    && rm /tmp/requirements.lock

# The Spark jar sets (Delta, s3a), resolved once here so that pods never reach Maven.
COPY neuraxis/dev/jars.py /tmp/jars.py
RUN NEURAXIS_JARS_DIR=/opt/neuraxis/jars /opt/venv/bin/python /tmp/jars.py delta s3 \
    && rm -rf /tmp/jars.py /root/.ivy2*

# The project code, importable as `neuraxis` (neuraxis/{crds,operator,workloads,infra} link to
# the top-level folders) with its console script in the venv.
WORKDIR /opt/neuraxis
COPY pyproject.toml README.md ./
COPY neuraxis ./neuraxis
COPY crds ./crds
COPY operator ./operator
COPY workloads ./workloads
COPY infra ./infra
RUN --mount=from=ghcr.io/astral-sh/uv:0.13.8,source=/uv,target=/usr/local/bin/uv \
    uv pip install --no-config --no-cache --no-deps --python /opt/venv/bin/python -e /opt/neuraxis \
    && python3.11 -m compileall -q --invalidation-mode checked-hash /opt/neuraxis \
    && /opt/venv/bin/neuraxis --help >/dev/null

USER 10001
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    NEURAXIS_HOME=/tmp/neuraxis \
    NEURAXIS_JARS_DIR=/opt/neuraxis/jars \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["/usr/bin/tini", "--", "neuraxis"]
CMD ["--help"]
