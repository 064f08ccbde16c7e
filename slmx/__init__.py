"""slmx: small language models on the CPU, fast."""
from .errors import FormatError, ModelNotFoundError, SlmxError

__version__ = "0.1.0"
__all__ = ["FormatError", "ModelNotFoundError", "SlmxError", "__version__"]
