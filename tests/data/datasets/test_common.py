"""The builders' shared layer: finding choice, BI-RADS proxy, val carving, tables, and the
manifest's rotate column as convert reads it."""

import os

import pytest

from mammo_tf.data import manifest
from mammo_tf.data.datasets import common


def test_most_severe_finding_then_largest_box():
  f = common.Finding
  findings = [f("benign", (0, 0, 50, 50), "a"), f("malignant", None, "b"),
              f("malignant", (0, 0, 4, 5), "c"), f("malignant", (9, 9, 5, 5), "d")]
  assert common.pick_finding(findings).ref == "d"        # 25 px beats 20 px; a box beats none
  assert common.pick_finding(findings[:2]).ref == "b"    # severity first
  assert common.pick_finding([f("normal", None, "x")]).ref == "x"


@pytest.mark.parametrize("text,label", [
    ("BI-RADS 1", "normal"), ("BI-RADS 3", "benign"), ("BI-RADS 4", "malignant"),
    ("4c", "malignant"), ("5", "malignant"), ("0", None), ("", None), ("BI-RADS", None)])
def test_birads_proxy(text, label):
  assert common.birads_label(text, common.parse_birads_map(common.DEFAULT_BIRADS_MAP)) == label


def test_birads_map_subcategory_and_skip():
  mapping = common.parse_birads_map("1=normal,4a=benign,4=malignant,3=skip")
  assert [common.birads_label(t, mapping) for t in ("4a", "4b", "3")] == [
      "benign", "malignant", None]
  with pytest.raises(common.DatasetError):
    common.parse_birads_map("4=cancer")


def test_val_carving_is_seeded_exact_and_order_free():
  patients = [f"P{k:03d}" for k in range(40)]
  a = common.carve_val(patients, 0.1, seed=3)
  assert len(a) == 4 and a == common.carve_val(reversed(patients), 0.1, seed=3)
  assert a != common.carve_val(patients, 0.1, seed=4)


def test_tables_strip_cells_and_bom(tmp_path):
  path = tmp_path / "t.csv"
  path.write_bytes("\ufeffa , b\r\n\"x\n\", 2\n\n3,4\n".encode("utf-8"))
  assert common.read_table(str(path)) == [(2, {"a": "x", "b": "2"}), (5, {"a": "3", "b": "4"})]
  assert common.xyxy_to_box(5, 5, 5, 9) is None
  assert common.xyxy_to_box(1.5, 2, 4, 3) == (1.5, 2.0, 2.5, 1.0)


def test_manifest_rotate_column(tmp_path):
  path = os.path.join(tmp_path, "m.csv")
  with open(path, "w") as f:
    f.write("patient_id,exam_id,image_id,domain,path,label,rotate\n"
            "P,E,I1,dbt,a.dcm,normal,180\nP,E,I2,dbt,b.dcm,normal,\nP,E,I3,dbt,c.dcm,normal,90\n")
  rows, errors = manifest.read_manifest(path)
  assert [(r.image_id, r.rotate) for r in rows] == [("I1", 180), ("I2", 0)]
  assert [(e.line, e.reason) for e in errors] == [(4, "rotate '90' is not 0 or 180")]
