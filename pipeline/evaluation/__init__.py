"""The blessing, the evaluate stage's report and its plots. Imports
pipeline.core and pipeline.data.
"""
