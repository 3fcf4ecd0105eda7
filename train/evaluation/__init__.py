"""Evaluation: does training on refined data beat synthetic on real data?

``downstream`` (the task networks: gaze CNN, hand hourglass, FCN8s; ``refinery train-task``),
``realism`` (two-sample classifier test and KID, no labels needed), ``evaluate`` (``refinery
evaluate``: task networks per seed, gap closed, label drift, realism), ``report`` (its HTML
page) and ``rows`` (decoded sets on disk, read back a batch at a time). The trainers import
from here only for the geometry term's frozen task network (``train.simgan``).
"""
