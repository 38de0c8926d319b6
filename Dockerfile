# Task Arithmetic Explorer as a Docker image: a Hugging Face Space (Docker SDK) or any host, with or without a GPU.
# Not built in CI (no Docker engine there); see README, "Deploying on a Hugging Face Space".
FROM python:3.11-slim

# Spaces run the container as uid 1000; give that user a home and put its pip scripts on PATH.
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=7860
WORKDIR /home/user/app

# Dependencies first (a layer that survives code changes). torch==2.14.1 from PyPI is the CUDA build on x86-64 Linux:
# right for a GPU Space, and it also runs on CPU hardware.
COPY --chown=user requirements.txt .
RUN pip install --user -r requirements.txt

# The app, the engine, the bundles under precomputed/ and the start-up script.
COPY --chown=user . .

EXPOSE 7860
# space/start.sh: caches on /data when persistent storage is attached, `python -m arith space-init` (fetch the
# configured bundle once, verified), then `streamlit run app.py` on 0.0.0.0:$PORT.
CMD ["sh", "space/start.sh"]
