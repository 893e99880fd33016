"""The study runner (`python -m pipeline.study`), the topmost layer: it may
import the stages of pipeline/ and everything below them.
"""
