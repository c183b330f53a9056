r"""Re-renders W/report.md and W/report.html from W/results.json (no training, no evaluation).

  python -m eval.report --workdir runs/demo/study [--data runs/demo/tfrecords]
"""

import os

from absl import flags

from mammo_tf import cli
from mammo_tf.evaluation import report
from mammo_tf.evaluation import study

_WORKDIR = flags.DEFINE_string("workdir", None, "Study work directory.", required=True)
_DATA = flags.DEFINE_string("data", None, "Converter output folder (for summary.json).")


def main(argv):
  del argv
  results = study.read_json(os.path.join(_WORKDIR.value, "results.json"))
  summary = study.load_data_summary(_DATA.value) if _DATA.value else None
  md, html = report.write_report(_WORKDIR.value, results, summary)
  print(report.format_table(results))
  print(f"report: {html} ({md})")


if __name__ == "__main__":
  cli.run(main)
