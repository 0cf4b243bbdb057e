"""Use cases every frontend shares: may import core.domain, core.media, core.board, core.settings, core.metrics."""
