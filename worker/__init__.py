"""The arq worker and the separation engine. Imports torch; never imports a chat library."""
