# The carbrand-search image: CUDA-capable PyTorch base, the package and its study files.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY carbrand_search ./carbrand_search
COPY studies ./studies
# torch comes from the base image; the range in pyproject.toml accepts it.
RUN pip install --no-cache-dir '.[kaggle,s3]'

ENV CARBRAND_STUDIES=/app/studies
ENTRYPOINT []
CMD ["carbrand-search", "--help"]
