"""The lowest layer: stage helpers (config, workdir, errors), the workdir lock and
the config's range checks. Imports nothing else of pipeline.
"""
