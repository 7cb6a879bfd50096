"""The callbacks the CLI adds to every run: Viterbi and phone-level decoding and phone errors scored in
evaluation (from one collector of the epoch's predictions), TensorBoard extras (monitoring, figures,
run_config), the prediction CSV writer, what resuming needs, and the float32 matmul precision on a
GPU. The CLI connects them (timit_lit.cli): none looks another up."""

from timit_lit.callbacks.cuda_matmul import CudaMatmulPrecision
from timit_lit.callbacks.figures import ValidationFigures
from timit_lit.callbacks.monitoring import EpochLearningRate, EpochThroughput
from timit_lit.callbacks.outputs import EvaluationOutputs
from timit_lit.callbacks.phone_decoding import PhoneDecoding
from timit_lit.callbacks.phone_errors import PhoneErrorEvaluation
from timit_lit.callbacks.prediction import CsvPredictionWriter
from timit_lit.callbacks.resume import AtomicCheckpointIO, LastCheckpoint, ResumeState
from timit_lit.callbacks.run_config import RunConfig
from timit_lit.callbacks.viterbi import ViterbiEvaluation

__all__ = ["EpochLearningRate", "EpochThroughput", "RunConfig", "ValidationFigures", "EvaluationOutputs",
           "PhoneDecoding", "PhoneErrorEvaluation", "CsvPredictionWriter", "AtomicCheckpointIO", "LastCheckpoint",
           "ResumeState", "ViterbiEvaluation", "CudaMatmulPrecision"]
