"""The serving signature, the HTTP layer, request bodies and infra validation.
Imports pipeline.core and pipeline.data.
"""
