"""Keeping a long job's memory: trims only past the slack, and not again for memory in use."""

import pytest

from edgempi import memory


def test_trims_only_past_the_slack_and_takes_what_stays_as_the_new_reference(monkeypatch):
    sizes = iter([1000, 1010, 1030, 1040, 1030, 1061, 1000, 1015, 1021])  # MB at each reading
    monkeypatch.setattr(memory, "resident_mb", lambda: next(sizes))
    trimmer = memory.Trimmer(slack=0.02)
    trimmed = []
    trimmer.trim = lambda pad: trimmed.append(pad)
    trimmer.after_batch()  # 1000: the reference
    trimmer.after_batch()  # 1010: within 2%
    trimmer.after_batch()  # 1030: past it, trimmed; 1040 stays: in use, the new reference
    assert trimmed == [0] and trimmer.reference == 1040
    trimmer.after_batch()  # 1030
    trimmer.after_batch()  # 1061: past 1040 x 1.02, trimmed, down to 1000
    assert trimmed == [0, 0] and trimmer.reference == 1040
    trimmer.reset()
    trimmer.after_batch()  # 1015: the new plan's reference
    trimmer.after_batch()  # 1021: within 2% of it
    assert trimmer.trims == 2 and trimmer.reference == 1015


def test_resident_memory_is_measured_here():
    if not memory.Path("/proc/self/statm").exists():
        pytest.skip("no /proc on this system")
    before = memory.resident_mb()
    block = bytearray(64 * 2**20)
    block[::4096] = b"\1" * len(block[::4096])  # touch every page
    assert memory.resident_mb() > before + 50
