"""Everything that talks MPI on the hot path; ``comm`` is always passed in explicitly."""

from .collective import JobError, collectively
from .gather import stream_to_root
from .halo import HaloExchange
from .reduce import MapSums
from .waiting import barrier

__all__ = ["HaloExchange", "JobError", "MapSums", "barrier", "collectively", "stream_to_root"]
