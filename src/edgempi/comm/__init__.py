"""Everything that talks MPI; a ``Communicator`` is always passed in explicitly."""

from .collective import JobError, collectively
from .communicator import Communicator, Tag, world
from .gather import stream_to_root
from .halo import HaloExchange
from .reduce import MapSums

__all__ = ["Communicator", "HaloExchange", "JobError", "MapSums", "Tag", "collectively", "stream_to_root", "world"]
