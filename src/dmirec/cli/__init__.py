"""The command line (:mod:`.main`, the ``dmirec`` console script and ``python -m dmirec``) and the
demo (:mod:`.demo`)."""
