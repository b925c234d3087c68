"""intasr: integer-only, zero-shot quantization for speech recognition.

Modules, each with one job:
  audio      loading, resampling, the NeMo mel front end
  text       vocabulary, CTC decoding, WER/CER with confidence intervals
  data       LibriSpeech folders, NeMo manifests, downloads
  models/    float ConvASR (QuartzNet, JasperDR), .nemo checkpoint IO, BN restoration
  quant/     quantizers, observers, BN folding, dyadic requantization
  intops/    integer kernels
  convert    float model -> integer-only model
  synth      zero-shot synthetic calibration data from BatchNorm statistics
  experiments tables, BOPs, model sizes
  deploy/    ONNX export, onnxruntime / TensorRT runners, latency benchmarks
  cli        the `intasr` command
  api        `intasr.load(path).transcribe(files_or_arrays)`
"""

from .version import __version__  # noqa: F401


def __getattr__(name: str):
    """`intasr.load` and `intasr.Recognizer`, imported on first use (torch is not imported
    when the package is)."""
    if name in ("load", "Recognizer"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
