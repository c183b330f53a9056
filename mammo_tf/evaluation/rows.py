"""The seven rows of the paper's Table 2 and the five trainings behind them.

  ===============  ==========  ===========  ==================  ==============  ====
  key              train data  test data    procedure           model (run)     HM
  ===============  ==========  ===========  ==================  ==============  ====
  ffdm_scratch     FFDM        FFDM         Train from scratch  base            no
  mip_test_only    FFDM        MIP          Test only           base            no
  mip_finetune     FFDM        MIP          Fine-tune           finetune        no
  mip_spottune     FFDM        MIP          SpotTune            spottune        no
  hm_test_only     FFDM        MIP with HM  Test only           base            yes
  hm_finetune      FFDM        MIP with HM  Fine-tune           finetune_hm     yes
  hm_spottune      FFDM        MIP with HM  SpotTune            spottune_hm     yes
  ===============  ==========  ===========  ==================  ==============  ====
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

RUNS = ("base", "finetune", "finetune_hm", "spottune", "spottune_hm")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of Table 2."""
  key: str
  train_data: str
  test_data: str
  procedure: str
  run: str
  domain: str
  hm: bool
  paper_mean: float
  paper_std: float

  @property
  def label(self) -> str:
    return f"{self.train_data} -> {self.test_data}, {self.procedure}"


ROWS = (
    Row("ffdm_scratch", "FFDM", "FFDM", "Train from scratch", "base", "ffdm", False, 0.909, 0.001),
    Row("mip_test_only", "FFDM", "MIP", "Test only", "base", "dbt", False, 0.751, 0.001),
    Row("mip_finetune", "FFDM", "MIP", "Fine-tune", "finetune", "dbt", False, 0.759, 0.003),
    Row("mip_spottune", "FFDM", "MIP", "SpotTune", "spottune", "dbt", False, 0.825, 0.002),
    Row("hm_test_only", "FFDM", "MIP with HM", "Test only", "base", "dbt", True, 0.847, 0.001),
    Row("hm_finetune", "FFDM", "MIP with HM", "Fine-tune", "finetune_hm", "dbt", True,
        0.837, 0.001),
    Row("hm_spottune", "FFDM", "MIP with HM", "SpotTune", "spottune_hm", "dbt", True,
        0.830, 0.002),
)


def row_summary(row: Row, result: Mapping[str, Any]) -> dict[str, Any]:
  """A results.json row: the row's identity, the paper's value and our numbers (no ROC points)."""
  out = dataclasses.asdict(row)
  out["paper"] = {"mean": out.pop("paper_mean"), "std": out.pop("paper_std")}
  for k in ("seeds", "aucs", "mean", "std", "std_ddof", "std_sample", "ci", "n_images",
            "n_patients", "n_positive", "n_negative"):
    out[k] = result[k]
  out["note"] = result.get("note", "")
  return out
