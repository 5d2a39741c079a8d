# The carbrand-search image: CUDA-capable PyTorch base, the package and its study files.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY carbrand_search ./carbrand_search
COPY studies ./studies
# torch comes from the base image; the range in pyproject.toml accepts it.
RUN pip install --no-cache-dir '.[kaggle,s3]'

ENV CARBRAND_STUDIES=/app/studies
# Not root: a process that escapes its job cannot own the container. The mounted volumes'
# folders are made for this user, so a fresh volume starts writable for it.
RUN useradd --create-home --uid 1000 carbrand \
    && mkdir -p /artifacts /cache \
    && chown carbrand:carbrand /artifacts /cache
USER carbrand
ENTRYPOINT []
CMD ["carbrand-search", "--help"]
