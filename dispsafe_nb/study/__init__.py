"""Runs that combine training and evaluation.

pipeline     the whole pipeline in one call (guard -> teacher -> students -> evaluation)
baselines    notebook 04's comparison: runs, a shared budget, the comparison table, the best lr per group
paper_scale  a student of a training mix at the paper's scale: budgets, teacher samples, one run
"""
