"""Platform-neutral parts of stembot: requests, stem grammar, audio I/O, queue, artifacts, settings.

Nothing in here imports torch, telegram or discord.
"""
