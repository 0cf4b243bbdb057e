# The GPU worker: CUDA runtime, torch's CUDA build (pip takes it on Linux), demucs, ffmpeg,
# libmp3lame (the worker encodes mp3 stems with it in-process; ffmpeg already depends on it).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip ffmpeg libmp3lame0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY core core
COPY bots bots
COPY worker worker
RUN pip3 install --no-cache-dir '.[worker]'
# demucs caches downloaded weights under $TORCH_HOME, stembot its compiled networks beside
# them: a volume, so both happen once.
ENV TORCH_HOME=/models STEMBOT_ENGINE_CACHE_DIR=/models/stembot-engine STEMBOT_DEVICE=cuda STEMBOT_WORKER_MAX_JOBS=8
VOLUME ["/models"]
ENTRYPOINT ["stembot"]
CMD ["worker"]
