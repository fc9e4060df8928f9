"""Luigi wiring of the pipeline: `luigi --module workflows TrainSCAN --dataset demo --local-scheduler`.

Task graph (each task a thin wrapper over the library; artifacts under $SCAN_WORKSPACE):
GenerateDemo (demo) | DatasetInputs (real data) -> BuildVocab -> PrepareCaptions
                                               -> FeatureStore -> ExtractFeatures x shards | ImportFeatures
-> TrainModel -> EvaluateSCAN [-> EnsembleSCAN] + BuildSearchIndex -> Report -> TrainSCAN (prints the table).
"""
from workflows.data import BuildVocab, DatasetInputs, GenerateDemo, PrepareCaptions
from workflows.defaults import apply_defaults
from workflows.evaluation import EnsembleSCAN, EvaluateSCAN
from workflows.features import ExtractFeatures, FeatureStore
from workflows.imports import ImportFeatures
from workflows.report import Report, TrainSCAN
from workflows.search_index import BuildSearchIndex
from workflows.training import TrainModel

apply_defaults()  # exit codes and worker settings wherever luigi runs, not only beside luigi.cfg

__all__ = ["BuildSearchIndex", "BuildVocab", "DatasetInputs", "EnsembleSCAN", "EvaluateSCAN", "ExtractFeatures",
           "FeatureStore", "GenerateDemo", "ImportFeatures", "PrepareCaptions", "Report", "TrainModel", "TrainSCAN"]
