"""The model, its compile and fit (one worker or many), the per-epoch
evaluation and the training set rule. Imports pipeline.core and pipeline.data.
"""
