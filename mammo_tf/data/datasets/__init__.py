"""Manifest builders for public mammography datasets and plain DICOM folders.

``BUILDERS[name](root, options) -> common.BuildResult``; one module per dataset, sharing
`common` (one row per image, most severe finding, skipped rows, outputs). No TF, no flags.
"""

from __future__ import annotations

import importlib
from typing import Callable

from mammo_tf.data.datasets import common

_MODULES = {
    "cbis-ddsm": "cbis_ddsm", "vindr-mammo": "vindr_mammo", "bcs-dbt": "bcs_dbt",
    "rsna": "rsna", "cmmd": "cmmd", "inbreast": "inbreast", "embed": "embed",
    "dicom-folder": "dicom_folder",
}
NAMES = tuple(_MODULES)


def get_builder(name: str) -> Callable[[str, common.Options], common.BuildResult]:
  """The `build(root, options)` function of dataset `name` (one of `NAMES`)."""
  if name not in _MODULES:
    raise common.DatasetError(f"unknown dataset {name!r} (expected one of {', '.join(NAMES)})")
  return importlib.import_module(f"mammo_tf.data.datasets.{_MODULES[name]}").build
