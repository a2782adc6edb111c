"""`m4sam delivery`: a real camera process and a real subscriber, per QoS combination."""
from __future__ import annotations

import json
import pytest

from m4sam_ros.cli import main

@pytest.mark.slow
def test_delivery_counts_whole_pairs_and_reports_incompatible_qos(tmp_path, capsys):
    output = tmp_path / "delivery.json"
    assert main(["delivery", "--sizes", "64x48", "--rate", "20", "--seconds", "0.5", "--publishers",
                 "reliable,best_effort", "--subscribers", "auto,reliable", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    rows = {(r["publisher"], r["subscriber"]): r for r in report["rows"]}
    assert set(rows) == {("reliable", "auto"), ("reliable", "reliable"), ("best_effort", "auto"),
                         ("best_effort", "reliable")}
    for key in (("reliable", "auto"), ("reliable", "reliable")):
        row = rows[key]
        # small frames over a reliable link: every pair arrives whole
        assert row["connected"] and row["sent"] == 10 and row["pairs"] == 10 and row["pairs_delivered"] == 1.0
        assert row["subscription"] == "RELIABLE" and row["latency_ms_median"] > 0
    assert rows[("best_effort", "auto")]["subscription"] == "BEST_EFFORT"  # auto matched the publisher
    assert rows[("best_effort", "auto")]["connected"] and rows[("best_effort", "auto")]["pairs"] > 0
    incompatible = rows[("best_effort", "reliable")]
    assert not incompatible["connected"] and incompatible["pairs"] == 0  # a RELIABLE reader never connects
    assert report["rmem_default"] is None or report["rmem_default"] > 0
    out = capsys.readouterr().out
    assert "no connection (incompatible QoS)" in out and "| 64x48 | reliable | auto | RELIABLE | 10/10 (100 %)" in out


def test_delivery_refuses_bad_arguments():
    with pytest.raises(SystemExit, match="--publishers must be among"):
        main(["delivery", "--publishers", "sometimes"])
    with pytest.raises(SystemExit, match="a size is WxH"):
        main(["delivery", "--sizes", "vga"])
