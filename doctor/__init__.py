"""`scan-pipeline doctor WORKSPACE`: check every artifact of a workspace and say how to fix each problem."""
from doctor.checks import Diagnosis, Finding, diagnose

__all__ = ["Diagnosis", "Finding", "diagnose"]
