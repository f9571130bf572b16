"""bild: Big Little Decoder (Kim et al., NeurIPS 2023) for HuggingFace transformers.

    from bild import BiLDGenerator
    generator = BiLDGenerator(small, large, fallback_threshold=0.6, rollback_threshold=2.0)
    out = generator.generate(**inputs, max_new_tokens=64)  # greedy or sampling, as the config says

or, inside transformers' own generate:

    from bild import bild_generate
    large.generate(**inputs, custom_generate=bild_generate, small_model=small)
"""

from .config import ALWAYS_FALLBACK, AUTO, PAPER_FALLBACK, BiLDConfig
from .decode import BiLDOutput
from .draft_vocab import frequent_tokens, restrict_draft_vocab
from .generator import BiLDGenerator
from .hf import bild_generate
from .stats import BiLDStats

__version__ = "0.1.0"

__all__ = ["ALWAYS_FALLBACK", "AUTO", "PAPER_FALLBACK", "BiLDConfig", "BiLDGenerator", "BiLDOutput", "BiLDStats", "bild_generate", "frequent_tokens",
           "restrict_draft_vocab", "__version__"]
