"""DICOM mammograms and DBT volumes -> 12-bit uint16 images (paper Fig. 2: 0..4095). No TF.

The public API; the work is done in small modules:

* `mammo_tf.io.header`: opening a file (`open_file`, `open_dataset`: the one place where an input
  is opened and parsed), header checks before decoding (`open_source`), frame decoding
  (`iter_frames`), `DicomError`.
* `mammo_tf.io.voi`: the VOI window functions of PS3.3 C.11.2.1.2 and LUT tables (`Window`, `Lut`).
* `mammo_tf.io.intensity`: the pointwise rule as a frozen dataclass (`IntensityRule`), `to_12bit`,
  `intensity_table`.
* `mammo_tf.io.rules`: which rule a file gets: ``auto`` (default: the file's VOI window, else its
  robust used range), ``window``, ``range``, ``bits`` (``[0, 2**BitsStored - 1]``, the rule before
  VOI support, kept bit for bit).
* `mammo_tf.io.metadata`: `DicomMeta` (no patient identifiers), laterality, view, spacing, flips.
* `mammo_tf.io.readers`: `read_ffdm`, `read_dbt_mip` (streaming MIP, one mapping per volume),
  `read_image`, `list_dbt_slices`.

Decoding goes through pydicom (`pydicom.pixels.iter_pixels`, one frame at a time) with
pylibjpeg / pylibjpeg-openjpeg / pylibjpeg-libjpeg for JPEG, JPEG-LS and JPEG 2000, and pydicom's
own RLE decoder. Signed pixel data (PixelRepresentation 1) is read as two's complement; it is
accepted when a modality transform says how to interpret it or when no non-padding stored value
is negative. Float pixel data is rejected. PresentationLUTShape is ignored: for DX/MG images
INVERSE accompanies MONOCHROME1 and carries the same information.

Privacy: only the tags listed in `header.HEADER_TAGS` are ever parsed, so patient names, ids and
dates are never read; `DicomMeta` and `DicomError` carry none.
"""

from mammo_tf.io.header import HEADER_TAGS
from mammo_tf.io.header import MAX_FRAME_BYTES
from mammo_tf.io.header import DicomError
from mammo_tf.io.header import open_dataset
from mammo_tf.io.header import open_file
from mammo_tf.io.header import open_source
from mammo_tf.io.intensity import IntensityRule
from mammo_tf.io.intensity import intensity_table
from mammo_tf.io.intensity import to_12bit
from mammo_tf.io.metadata import DicomMeta
from mammo_tf.io.metadata import flip_to_canonical
from mammo_tf.io.metadata import infer_laterality
from mammo_tf.io.readers import list_dbt_slices
from mammo_tf.io.readers import read_dbt_mip
from mammo_tf.io.readers import read_ffdm
from mammo_tf.io.readers import read_image
from mammo_tf.io.rules import INTENSITY_RULES
from mammo_tf.io.rules import RANGE_PERCENTILES
from mammo_tf.io.voi import Lut
from mammo_tf.io.voi import Window

_open_source = open_source  # the name older tests use

__all__ = [
  "HEADER_TAGS", "MAX_FRAME_BYTES", "DicomError", "open_dataset", "open_file", "open_source",
  "IntensityRule", "intensity_table", "to_12bit", "DicomMeta", "flip_to_canonical",
  "infer_laterality", "list_dbt_slices", "read_dbt_mip", "read_ffdm", "read_image",
  "INTENSITY_RULES", "RANGE_PERCENTILES", "Lut", "Window",
]
