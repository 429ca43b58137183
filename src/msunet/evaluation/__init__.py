"""Evaluation: the scores papers report (`scores`), the HTML report (`report`), and `evaluate`
(`evaluate`: a run on a dataset's held-out split, or folders of masks).
"""
