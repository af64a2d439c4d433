"""Training objectives: the sampled-softmax losses and their negative sampler (:mod:`.losses`)."""
