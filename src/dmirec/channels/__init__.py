"""Classical item-to-item retrieval channels: training-free neighbourhood and linear models.

Each method turns the binary users x items matrix of the training users into an item-item
matrix ``S`` of shape (N + 1, N + 1) (row and column 0, the padding item, are empty); a user's
score for item j is ``sum_i w_i S[i, j]`` over the items i of their history (weight ``w_i`` from
:func:`~dmirec.channels.interactions.user_item_matrix`), and :func:`~dmirec.channels.scoring.top_items`
returns the best n items per user.

* :mod:`~dmirec.channels.interactions`: histories and the prepared train split as sparse
  user x item matrices.
* :mod:`~dmirec.channels.itemknn`: cosine item kNN with shrinkage, top-k neighbours per item.
* :mod:`~dmirec.channels.ease`: EASE (closed-form ridge item-item regression with zero diagonal).
* :mod:`~dmirec.channels.rp3beta`: RP3beta (3-step random walk with a popularity penalty).
* :mod:`~dmirec.channels.scoring`: blockwise top-n scoring with history exclusion and popularity fill.

Every function is plain numpy/scipy; nothing here imports torch except the shared exclusion
normaliser, which is imported when an exclusion is given. docs/classical.md has the formulas,
the memory bounds and the measured numbers.
"""
