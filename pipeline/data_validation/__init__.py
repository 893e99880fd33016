"""TFDV-like data validation: statistics, schema, anomalies, their Beam
combiners and the preprocess stage's validation step. Imports pipeline.core and
pipeline.data.
"""
