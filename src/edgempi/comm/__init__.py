"""Everything that talks MPI on the hot path; ``comm`` is always passed in explicitly."""

from .collective import JobError, collectively
from .gather import stream_to_root
from .halo import HaloExchange

__all__ = ["HaloExchange", "JobError", "collectively", "stream_to_root"]
