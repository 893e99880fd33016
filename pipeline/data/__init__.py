"""Records, datasets, the validation split, label-issue detection, the preprocess
plan and manifest, the Dask runner and the example sources. Imports only
pipeline.core.
"""
