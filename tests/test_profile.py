"""Profile arithmetic and files (the measuring itself runs in the CLI and MPI tests)."""

import pytest

from edgempi.profile import Profile, ProfileError, pairing_rounds


@pytest.mark.parametrize("size", range(1, 12))
def test_pairing_rounds_meet_every_pair_once_in_disjoint_rounds(size):
    rounds = pairing_rounds(size)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == [(i, j) for i in range(size) for j in range(i + 1, size)]
    for r in rounds:
        ranks = [x for p in r for x in p]
        assert len(ranks) == len(set(ranks))
    assert len(rounds) <= size


def test_profile_round_trip_and_weights(tmp_path):
    profile = Profile(["a", "b"], [0.2, 0.1], 0.05, [[0.0, 1e-4], [1e-4, 0.0]], [[None, 1e8], [1e8, None]], "x")
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile
    assert profile.speeds == pytest.approx([5.0, 10.0])
    assert profile.head_share(0) == pytest.approx(0.25)


def test_bad_profile_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not a saved edgempi profile"):
        Profile.load(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"hosts": ["a"], "compute_s": [1, 2], "head_s": 0, "latency_s": [[0]],'
                                       ' "bandwidth_Bps": [[null]], "workload": "x"}')
    with pytest.raises(ProfileError, match="inconsistent"):
        Profile.load(tmp_path / "odd.json")
