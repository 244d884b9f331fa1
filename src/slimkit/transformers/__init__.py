"""Transformers: deploy Hugging Face sentence encoders (BERT family) small and fast, measured.

Needs the ``hf`` extra (transformers, the bundled all-MiniLM-L6-v2); imported lazily.
"""

from slimkit.transformers.api import MeasureConfig, compress_encoder, measure_onnx
from slimkit.transformers.embed import (
    SentenceEncoder,
    TruncationWarning,
    embed,
    pool,
    sentence_encoder,
    tokenize,
)
from slimkit.transformers.fidelity import EmbeddingFidelity, embedding_fidelity, rankdata, spearman
from slimkit.transformers.int8 import (
    EncoderInt8,
    Int8Result,
    QuantMode,
    SmoothConfig,
    quantize_encoder,
    sensitivity_scan,
)
from slimkit.transformers.loader import (
    SUPPORTED_MODEL_TYPES,
    Encoder,
    check_folder,
    default_model_folder,
    load_encoder,
)
from slimkit.transformers.onnx_export import EncoderExport, export_encoder
from slimkit.transformers.packed import PackedSentenceEncoder
from slimkit.transformers.smooth import InputScaledLinear, smooth_encoder_
from slimkit.transformers.structural import (
    DistillConfig,
    EncoderStructural,
    StructuralResult,
    compress_structure,
    distill_,
    drop_layers_,
    prune_heads_,
)
from slimkit.transformers.token_scale import TokenScaledLinear

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "DistillConfig",
    "EmbeddingFidelity",
    "Encoder",
    "EncoderExport",
    "EncoderInt8",
    "EncoderStructural",
    "InputScaledLinear",
    "Int8Result",
    "MeasureConfig",
    "PackedSentenceEncoder",
    "QuantMode",
    "SentenceEncoder",
    "SmoothConfig",
    "StructuralResult",
    "TokenScaledLinear",
    "TruncationWarning",
    "check_folder",
    "compress_encoder",
    "compress_structure",
    "default_model_folder",
    "distill_",
    "drop_layers_",
    "embed",
    "embedding_fidelity",
    "export_encoder",
    "load_encoder",
    "measure_onnx",
    "pool",
    "prune_heads_",
    "quantize_encoder",
    "rankdata",
    "sensitivity_scan",
    "sentence_encoder",
    "smooth_encoder_",
    "spearman",
    "tokenize",
]
