"""colbert_index: a compressed multi-vector (ColBERT/PLAID-style) index engine."""

from colbert_index.encoder import Encoder
from colbert_index.errors import IndexFormatError, IndexLockedError
from colbert_index.index import Index
from colbert_index.kernels.reference import maxsim
from colbert_index.search import SearchParams, SearchResult

__all__ = ["Encoder", "Index", "IndexFormatError", "IndexLockedError", "SearchParams", "SearchResult", "maxsim"]
__version__ = "0.1.0"
