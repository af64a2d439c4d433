"""DMI: the model (:mod:`.model`) and its diffusion (:mod:`.diffusion`: schedule, process, denoiser,
conditioning). Nothing outside this package imports the diffusion."""
