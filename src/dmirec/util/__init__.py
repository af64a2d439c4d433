"""Leaf helpers that import nothing of dmirec: atomic file writes (:mod:`.atomic`)."""
