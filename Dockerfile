# lldd dashboard on a CUDA build of PyTorch.
# torch==2.13.0 from PyPI on linux/x86_64 is the CUDA build (it brings the CUDA runtime as wheels);
# the host needs an NVIDIA driver and `docker run --gpus all`.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LLDD_CACHE_DIR=/data/lldd-cache \
    HF_HOME=/data/hf \
    BROWSER_PATH=/usr/bin/chromium

# chromium: kaleido draws the figure exports (PNG, SVG, PDF) in it; DejaVu: the report theme's font, the same in
# every format.
RUN apt-get update && apt-get install -y --no-install-recommends curl chromium fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app.py ./
COPY pages ./pages
COPY lldd_core ./lldd_core
COPY .streamlit ./.streamlit

RUN useradd --create-home --uid 1000 lldd && mkdir -p /data && chown -R lldd /data /app
USER lldd
VOLUME ["/data/lldd-cache", "/data/hf"]

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD curl -fsS http://127.0.0.1:8501/_stcore/health || exit 1

# The hub token, if needed, comes from the environment at run time (-e HF_TOKEN=...), never the image.
# 0.0.0.0 (overriding .streamlit/config.toml's localhost): a container must listen on its own interface for
# `docker run -p` to reach it. There is no login: publish it as -p 127.0.0.1:8501:8501 or behind an
# authenticating proxy (README, Security).
CMD ["python", "-m", "streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", \
     "--server.headless=true", "--browser.gatherUsageStats=false"]
