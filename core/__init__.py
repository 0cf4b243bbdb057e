"""Platform-neutral parts of stembot, by kind (tests/test_layers.py holds the arrows downwards).

    core.domain    pure domain: requests, stem grammar, renders, jobs, facts, names, errors
    core.settings  configuration;  core.metrics, core.logs  observability
    core.media     adapters: audio through ffmpeg, links, yt-dlp, S3, temp files
    core.board     the job board: the only code that touches Redis or arq
    core.desk      the use cases every frontend shares: job desk, studio desk, delivery loop
    core.cli       `stembot`, the composition root

Nothing in here imports torch, telegram or discord.
"""
