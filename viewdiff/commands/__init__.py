"""The command lines, inside the package so that an installed viewdiff has them:
``viewdiff-train`` (= ``python train.py``) and ``viewdiff-infer`` (= ``python infer.py``)."""
