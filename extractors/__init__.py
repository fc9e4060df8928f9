"""Bottom-up-attention region feature extraction (Faster R-CNN, ResNet C4) in plain PyTorch.

Library code: never imports luigi (workflows/ wires it).
"""
