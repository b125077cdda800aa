# The unlearn image: the `unlearn` CLI with the ops extra (Prefect, MLflow, DVC, GX, boto3).
# One image serves every role of compose.yaml: the Prefect worker (`unlearn serve`), the MLflow
# tracking server (entrypoint `mlflow`) and the Prefect server (entrypoint `prefect`), so the
# servers and their clients always run the same pinned versions.
#
#   docker build -t unlearn:$(git rev-parse --short HEAD) .                             # CPU
#   docker build --build-arg VARIANT=cuda -t unlearn:$(git rev-parse --short HEAD)-cuda .
#   (add --build-arg GIT_COMMIT=$(git rev-parse HEAD) to label the image with its commit)
#
# VARIANT changes the torch wheels only. cpu: PyTorch's CPU index (no CUDA libraries, a few GB
# smaller). cuda: PyPI's Linux torch, which carries the CUDA runtime as nvidia-* wheels
# (pinned in constraints.txt), so one Python base image serves both; a GPU host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit (see docs/production.md).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
# torch in a layer of its own: it is most of the image and changes least often. The CPU
# index is an extra index: pip takes torch==2.14.1+cpu from it (a local version sorts above
# PyPI's 2.14.1) and every other pin from PyPI.
RUN case "$VARIANT" in \
        cpu) extra_index="--extra-index-url=https://download.pytorch.org/whl/cpu" ;; \
        cuda) extra_index="" ;; \
        *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir $extra_index --constraint constraints.txt torch torchvision \
    && python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY pyproject.toml README.md cli.py ./
COPY unlearn/ unlearn/
COPY tasks/ tasks/
COPY flows/ flows/
RUN pip install --no-cache-dir --constraint constraints.txt ".[ops]" \
    && pip check

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="unlearn" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
# git: DVC (through scmrepo) versions each batch's split in the project's git repository.
# safe.directory: the mounted project may belong to a host user other than this image's.
# DL3008 (pin apt versions) is ignored on purpose: the base image tag pins the Debian release,
# and Debian's archive drops superseded package versions, so an exact pin would only break
# rebuilds after the next security update, not make them reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /project
RUN groupadd --gid "$UID" unlearn \
    && useradd --uid "$UID" --gid unlearn --create-home --shell /usr/sbin/nologin unlearn \
    && install -d -o unlearn -g unlearn /project
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/home/unlearn/.prefect \
    UNLEARN_PROJECT_DIR=/project
USER ${UID}:${UID}
# The project folder: a git + DVC clone of this repository (params.yaml, dvc.yaml, .dvc/),
# mounted here; the flows read and write data/, models/ and the ledger relative to it.
WORKDIR /project
ENTRYPOINT ["unlearn"]
CMD ["--help"]
