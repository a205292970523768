"""python -m edgempi.plan and cluster files."""

import json
import re

import pytest

from edgempi.cluster import ClusterError, load_cluster
from edgempi.config import packaged
from edgempi.plan import main
from edgempi.profile import Profile


def test_cluster_files_load(tmp_path):
    farm = load_cluster("pi-farm-64")  # a packaged cluster by name
    assert len(farm.devices) == 64 and farm.devices[0].name == "pi5-1" and farm.devices[-1].speed == 0.35
    (tmp_path / "hetero.yaml").write_text(packaged("clusters")["pi4-hetero"].read_text())
    assert load_cluster(tmp_path / "hetero.yaml").speeds == [1.0, 0.75, 0.5, 0.5]  # a file
    assert {"emulated-hetero", "emulated-homogeneous", "pi4-hetero", "pi4-homogeneous"} <= set(packaged("clusters"))
    for text, message in [
        ("devices: []", "non-empty"),
        ("devices: [{speed: -1}]", "device 'device0': 'speed' must be a positive number, not -1"),
        ("devices: [{speed: fast}]", "'speed' must be a positive number, not 'fast'"),
        ("devices: [{speed: true}]", "'speed' must be a positive number, not True"),
        ("devices: [{count: 0}]", "count of at least 1, not 0"),
        ("call_s: -1\ndevices: [{}]", "': 'call_s' must be a positive number, not -1"),
        ("devices: [{sped: 1}]", "mapping"),
        ("speed: 1\ndevices: [{}]", "unknown setting"),
    ]:
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ClusterError, match=message):
            load_cluster(tmp_path / "c.yaml")


def test_plan_from_a_cluster_with_comparison(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--config", "vgg16", "--cluster", "pi4-hetero", "--compare", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "<- best" in printed
    result = json.loads(out.read_text())
    assert result["plan"]["strategy"] == "optimal" and result["plan"]["fusion"] == "dp"
    assert result["bound"] == pytest.approx(2.75)
    assert len(result["compare"]) == 4 * 5
    best = min(r["predicted_latency_s"] for r in result["compare"])
    default = next(r for r in result["compare"] if (r["strategy"], r["fusion"]) == ("optimal", "dp"))
    assert default["predicted_latency_s"] == pytest.approx(best)
    assert 1 < result["single_device_s"] / result["plan"]["predicted_latency_s"] <= result["bound"]


def test_plan_from_a_saved_profile(tmp_path, capsys):
    # resnet18 at 64x64: 10 stages; a measured-looking profile of two equal ranks
    stage_rows = [[32, 16, 16, 16, 8, 8, 4, 4, 2, 2], [8, 4, 4, 4, 2, 2, 1, 1, 1, 1]]
    seconds = [[r * 1e-4 for r in stage_rows[0]], [r * 1e-4 + 1e-5 for r in stage_rows[1]]]
    profile = Profile(
        ["a", "b"],
        stage_rows,
        [seconds, seconds],
        [1e-4, 1e-4],
        1e-5,
        [[0, 1e-5], [1e-5, 0]],
        [[None, 1e9], [1e9, None]],
        [None, None],
        "test",
    )
    profile.save(tmp_path / "p.json")
    config = tmp_path / "c.yaml"
    config.write_text("model: resnet18\n")
    assert main(["--config", str(config), "--profile", str(tmp_path / "p.json"), "--image", "64x64"]) == 0
    assert "resnet18 64x64 on 2 devices" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--cluster", "clusters/none.yaml"],
            "cluster file 'clusters/none.yaml' does not exist and is no packaged .*hetero",
        ),
        (["--cluster", "pi4-hetero", "--image", "3x200"], "a 3x200 image is too small for vgg16"),
        (["--cluster", "fast.yaml"], "device 'device0': 'speed' must be a positive number, not 'fast'"),
        (["--cluster", "negative.yaml"], "device 'pi': 'bandwidth_mbit' must be a positive number, not -100"),
        (
            ["--cluster", "pi4-hetero", "--config", "thick.yaml"],
            "min_rows 50 is more than the 6 rows of vgg16's smallest feature map at 200x200",
        ),
    ],
)
def test_plan_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast.yaml").write_text("devices: [{speed: fast}]\n")
    (tmp_path / "negative.yaml").write_text("devices: [{name: pi, bandwidth_mbit: -100}]\n")
    (tmp_path / "thick.yaml").write_text("model: vgg16\nmin_rows: 50\n")
    assert main(["--config", "vgg16", *args, "--json", "plan.json"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("edgempi: error: ") and re.search(message, err), err
    assert not (tmp_path / "plan.json").exists()


def test_plan_a_throughput_layout_lists_candidates_and_refusals(tmp_path, capsys):
    out = tmp_path / "layout.json"
    args = ["--config", "vgg16", "--cluster", "pi-small-memory", "--objective", "throughput", "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "refused             0/1/2: rank 2 has 300 MB, the whole model needs 408 MB" in printed
    assert printed.count("<- chosen") == 1 and "chosen layout" in printed
    result = json.loads(out.read_text())
    assert {tuple(map(tuple, r["groups"])) for r in result["refused"]} == {((0,), (1,), (2,)), ((0, 1), (2,))}
    best = max(result["candidates"], key=lambda c: c["throughput_img_s"])
    assert result["layout"]["groups"] == best["groups"]
    assert [2] not in result["layout"]["groups"]
    for group, plan in zip(result["layout"]["groups"], result["layout"]["plans"]):
        assert group[plan["classifier_rank"]] != 2  # the small board never holds the head
        assert f"ranks {','.join(map(str, group))} as the plan's ranks" in printed

    bound = 1e3 * min(c["latency_s"] for c in result["candidates"]) + 1
    assert main([*args, "--max-latency-ms", str(bound)]) == 0
    result = json.loads(out.read_text())
    assert len(result["candidates"]) == 1 and any("is over" in r["reason"] for r in result["refused"])
