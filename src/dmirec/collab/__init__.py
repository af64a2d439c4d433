"""Collaborative signal: the interest bank of training users and the neighbour rule (:mod:`.neighbours`)."""
