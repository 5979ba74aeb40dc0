from __future__ import annotations

import pytest

from bench.studies.throughput import ThroughputSpec, main, measure_throughput


def test_throughput_rows_hit_their_flop_targets_on_the_cpu():
    spec = ThroughputSpec("micro", "digits", batch=32, targets=(0.7,), repeats=2)
    rows = measure_throughput(spec)
    assert [r["executor"].split()[0] for r in rows] == ["never-exit", "uem"]
    assert rows[0]["flop_ratio"] == pytest.approx(1.0, abs=0.02)  # UEM heads cost a little
    assert abs(rows[1]["flop_ratio"] - 0.7) < 0.1
    assert all(r["wall_ratio"] > 0 and r["images_per_s"] > 0 for r in rows)


def test_throughput_cli_rejects_bad_targets(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--model", "micro", "--targets", "1.5"])
    assert e.value.code == 2 and "FLOP ratios in (0, 1]" in capsys.readouterr().err
