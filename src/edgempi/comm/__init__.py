"""Everything that talks MPI; a ``Communicator`` is always passed in explicitly."""

from .collective import JobError, collectively
from .columns import share_head
from .communicator import Communicator, Tag, world
from .groups import BatchCounter
from .halo import HaloExchange
from .reduce import MapSums, RowSums

__all__ = [
    "BatchCounter",
    "Communicator",
    "HaloExchange",
    "JobError",
    "MapSums",
    "RowSums",
    "Tag",
    "collectively",
    "share_head",
    "world",
]
