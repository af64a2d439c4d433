"""Training: the loop (:mod:`.train`), optimisers (:mod:`.optim`), TensorBoard logging
(:mod:`.tblog`) and several processes (:mod:`.distributed`)."""
