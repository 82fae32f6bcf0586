"""The errors ``compress-eval`` raises on purpose; each names the store, file or option at fault.

All subclass ``storage.errors.CompressError`` (the command line prints them as one line, exit
status 1) or ``UsageError`` (a bad option, exit status 2). They also subclass ``ValueError``
so library callers that catch it keep working.
"""

from __future__ import annotations

from storage.errors import CompressError


class FeatureError(CompressError, ValueError):
    """The features cannot be evaluated (missing split, empty, unlabelled, mismatched dims, k too large)."""


class ProvenanceMismatchError(FeatureError):
    """Train and val stores come from different models, or val labels are unknown to train."""


class ResultError(CompressError, ValueError):
    """A result file or run directory given to ``compress-eval report`` holds no evaluation result."""


class ProbeCheckpointError(CompressError, ValueError):
    """A linear-probe resume checkpoint belongs to another model, dataset or setting."""
