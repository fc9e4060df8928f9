"""SCAN: encoders, stacked cross attention, loss, training, evaluation, reference compatibility.

Library code: never imports luigi (workflows/ wires it).
"""
