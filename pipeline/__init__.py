"""Data layer: datasets, captions and vocabularies, the region-feature store.

Library code: never imports luigi (workflows/ wires it).
"""
