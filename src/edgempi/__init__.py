"""edgempi: exact partitioned CNN inference across small edge devices with MPI."""

__version__ = "0.1.0"
