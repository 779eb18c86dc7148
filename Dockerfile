# One image for the operator and every workload (`neuraxis operator`, `neuraxis workload ...`).
# Built by CI/CD elsewhere (no container engine runs on the development machines).
FROM python:3.11.11-slim-bookworm

# Spark needs a JRE; tini reaps Spark's and torchrun's child processes.
RUN apt-get update \
    && apt-get install --no-install-recommends -y openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/neuraxis
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-virtualenv=false -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && python -m neuraxis.cli --help >/dev/null

# Non-root, matching the pods' runAsUser; the root file system is mounted read-only in pods.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin neuraxis
USER 10001
ENV HOME=/tmp NEURAXIS_HOME=/tmp/neuraxis PYTHONUNBUFFERED=1
ENTRYPOINT ["/usr/bin/tini", "--", "neuraxis"]
CMD ["--help"]
