"""Names of the files and folders in the project's work directories, defined once.

A training work dir (``train.*`` jobs, `mammo_tf.training`)::

  config.json  tb/  backup/state.npz  best.keras  export/  history.json  policy.json  done.json

``done.json`` is written last: its presence means the run is complete. A study work dir
(``eval.table2``) holds one training dir per run and the files below; a shift-study work dir
(``eval.shift_study``) its own. A converter output folder has ``summary.json``, ``errors.csv`` and
``cdf_<domain>.npz`` (`mammo_tf.data.schema.cdf_path`).
"""

# Training work dir.
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
HM_LUT_FILE = "hm_lut.npy"
DONE_FILE = "done.json"
MODEL_FILE = "best.keras"
EXPORT_DIR = "export"
TB_DIR = "tb"
BACKUP_DIR = "backup"
STATE_FILE = "state.npz"
POLICY_FILE = "policy.json"

# Study work dir (Table 2).
STUDY_CONFIG_FILE = "study_config.json"
RESULTS_FILE = "results.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
EVAL_DIR = "eval"
FIGURES_DIR = "figures"

LOG_DIR = "logs"                 # the trainings' logs

# Shift-study work dir.
SHIFT_CONFIG_FILE = "shift_config.json"
SHIFT_JSON = "shift.json"
SHIFT_FIGURE = "shift.png"

# Converter output folder.
SUMMARY_FILE = "summary.json"
ERRORS_FILE = "errors.csv"
