"""slmx's asv suite. Under `asv run` the package comes from the wheel asv built and installed in its
environment; with `asv run --python=same` in a checkout (extensions built in place) the checkout
itself is imported."""
import os
import sys

try:
    import slmx  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
