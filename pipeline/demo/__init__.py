"""The embedded demo dataset: synthetic shapes with captions, a real matching problem in seconds."""
from pipeline.demo.config import DemoConfig
from pipeline.demo.generate import BOXES_FILE, CAPTIONS_FILE, IMAGES_DIR, generate_demo

__all__ = ["BOXES_FILE", "CAPTIONS_FILE", "DemoConfig", "IMAGES_DIR", "generate_demo"]
