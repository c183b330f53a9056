"""Synthetic cohort: patient plan, per-patient rendering (FFDM + DBT), DICOM files and manifest.

Every patient is rendered from its own RNG streams seeded by (seed, patient index, purpose), so the
output is byte-identical whatever the number of worker processes.

Cohort structure: each patient has one *index* screening visit (FFDM exam of 4 images: L/R x CC/MLO)
and, with probability ``prior_exam_share``, an earlier normal FFDM exam of the same breasts (same
phantom texture, no finding, new noise). A share ``dbt_share`` of patients also has a DBT exam of
the same visit (4 volumes, same compressed breasts, same finding at the same place: a "combo"
acquisition); ``dbt_only_share`` have DBT but no FFDM. The patient's class is drawn from
``class_probs``; the finding lies in one breast, whose CC and MLO images carry the class; the other
breast's images are normal.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import datetime
import io
import json
import multiprocessing
import os
import time
from typing import Sequence

import numpy as np

from mammo_tf.config import LABELS
from mammo_tf.config import SyntheticConfig
from mammo_tf.synthetic import acquisition as acq
from mammo_tf.synthetic import phantom as ph
from mammo_tf.synthetic import vendors as vd
from mammo_tf.synthetic.dicom_writer import ImageInfo
from mammo_tf.synthetic.dicom_writer import write_dbt
from mammo_tf.synthetic.dicom_writer import write_ffdm

MANIFEST_COLUMNS = ("patient_id", "exam_id", "image_id", "domain", "path", "label", "laterality",
                    "view", "roi_x", "roi_y", "roi_w", "roi_h", "split")
# Per-patient class probabilities giving about the image proportions of the paper's Table 1
# (the finding is in one breast, i.e. half of an exam's images).
PAPER_CLASS_PROBS_FFDM = (0.8150, 0.1700, 0.0020, 0.0040)
PAPER_CLASS_PROBS_DBT = (0.7640, 0.2280, 0.0040, 0.0040)
SIDES = ("L", "R")
VIEWS = ("CC", "MLO")
_EPOCH = datetime.date(2015, 1, 5)


@dataclasses.dataclass(frozen=True)
class PatientPlan:
  index: int
  patient_id: str
  age: int
  label: str
  side: str
  has_ffdm: bool
  has_dbt: bool
  prior: bool
  ffdm_vendor: int
  dbt_vendor: int
  monochrome1: bool
  per_slice: bool
  benign_box: bool
  day: int


@dataclasses.dataclass(frozen=True)
class CohortReport:
  out_dir: str
  manifest: str
  num_patients: int
  num_ffdm: int
  num_dbt: int
  seconds: float


def _rng(seed: int, *key: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *key]))


def plan_patient(cfg: SyntheticConfig, seed: int, index: int,
                 paper_proportions: bool = False) -> PatientPlan:
  """Draws one patient's composition (deterministic in (seed, index)).

  The vendor draws are made over every vendor and then mapped onto ``cfg.vendors``' set, so a
  single-site cohort has the same patients (classes, sides, exams) as the multi-site one.
  """
  rng = _rng(seed, index, 0)
  dbt_only = rng.uniform() < cfg.dbt_only_share
  has_dbt = dbt_only or rng.uniform() < cfg.dbt_share / max(1e-9, 1.0 - cfg.dbt_only_share)
  if paper_proportions:
    probs = np.asarray(PAPER_CLASS_PROBS_DBT if has_dbt else PAPER_CLASS_PROBS_FFDM, float)
  else:
    probs = np.asarray(cfg.class_probs, float)
  label = LABELS[int(rng.choice(4, p=probs / probs.sum()))]
  ffdm_choices, dbt_choices = vd.vendor_choices(cfg.vendors)
  return PatientPlan(
      index=index, patient_id=f"SYN{index:05d}", age=int(rng.integers(40, 76)),
      label=label, side=SIDES[int(rng.integers(2))], has_ffdm=not dbt_only,
      has_dbt=bool(has_dbt), prior=bool(rng.uniform() < cfg.prior_exam_share),
      ffdm_vendor=ffdm_choices[int(rng.integers(len(vd.FFDM_VENDORS))) % len(ffdm_choices)],
      dbt_vendor=dbt_choices[int(rng.integers(len(vd.DBT_VENDORS))) % len(dbt_choices)],
      monochrome1=bool(rng.uniform() < cfg.monochrome1_share),
      per_slice=bool(rng.uniform() < cfg.per_slice_share),
      benign_box=bool(rng.uniform() < cfg.benign_box_share), day=int(rng.integers(0, 1800)))


def _date(day: int) -> str:
  return (_EPOCH + datetime.timedelta(days=day)).strftime("%Y%m%d")


def _grid_shape(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
  f = max(1, int(np.ceil(max(shape) / max_side)))
  return (int(np.ceil(shape[0] / f)), int(np.ceil(shape[1] / f)))


def _box_cols(box) -> list[str]:
  return [str(v) for v in box] if box is not None else ["", "", "", ""]


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Field of view and pixel spacings (mm) shared by a cohort's images."""
  fov_rows: float
  fov_cols: float
  spacing_ffdm: float
  spacing_dbt: float
  grid: tuple[int, int]
  grid_spacing: float


def _geometry(cfg: SyntheticConfig) -> _Geometry:
  fh, fw = cfg.ffdm_shape
  fov_rows = ph.FOV_ROWS_MM
  grid = _grid_shape(cfg.ffdm_shape, cfg.phantom_max_side)
  return _Geometry(fov_rows, fov_rows * fw / fh, fov_rows / fh, fov_rows / cfg.dbt_shape[0],
                   grid, fov_rows / grid[0])


@dataclasses.dataclass(frozen=True)
class _Exam:
  exam_id: str
  domain: str
  day: int
  with_lesion: bool
  key: int          # RNG stream of the exam's noise


def _exams(plan: PatientPlan) -> list[_Exam]:
  """A prior normal FFDM exam (some patients), the index FFDM exam and a combo DBT exam."""
  pid, exams = plan.patient_id, []
  if plan.has_ffdm and plan.prior:
    exams.append(_Exam(f"{pid}-E1", "ffdm", plan.day - 370, False, 1))
  if plan.has_ffdm:
    exams.append(_Exam(f"{pid}-E{len(exams) + 1}", "ffdm", plan.day, True, 2))
  if plan.has_dbt:
    exams.append(_Exam(f"{pid}-E{len(exams) + 1}", "dbt", plan.day, True, 3))
  return exams


def _breast(cfg: SyntheticConfig, geo: _Geometry, seed: int, index: int, si: int, vi: int):
  """The compressed breast of one side and view: (shape, tissue slabs, flip); same in every exam."""
  brng = _rng(seed, index, 1, si, vi)
  b = ph.sample_shape(brng, VIEWS[vi], geo.fov_rows, geo.fov_cols)
  tissue = ph.make_tissue(brng, b, geo.grid, geo.grid_spacing, cfg.phantom_layers)
  flip = SIDES[si] == "R"
  if flip:
    tissue.mu_dz = np.ascontiguousarray(tissue.mu_dz[:, :, ::-1])
  return b, tissue, flip


def _skin_and_support(b, shape: tuple[int, int], sp: float, flip: bool):
  skin, _, support = ph.skin_and_support(b, shape, sp)
  if flip:
    skin, support = skin[:, ::-1].copy(), support[:, ::-1].copy()
  return skin, support


def _image_info(plan: PatientPlan, exam: _Exam, seed: int, si: int, vi: int, sp: float,
                thickness: float) -> ImageInfo:
  """The fake identifiers and acquisition facts of one image."""
  index, pid, side, view, k = plan.index, plan.patient_id, SIDES[si], VIEWS[vi], exam.key
  return ImageInfo(
      seed=seed, patient_id=pid, patient_name=f"SYNTHETIC^PATIENT{index:05d}",
      birth_date=_date(plan.day - plan.age * 365 - 40)[:4] + "0101", age=plan.age,
      exam_id=exam.exam_id, accession=f"A{seed % 1000:03d}{index:05d}{k}",
      study_date=_date(exam.day),
      study_time=f"{8 + (index * 7 + k) % 9:02d}{(index * 13) % 60:02d}00",
      image_id=f"{exam.exam_id}-{side}{view}", laterality=side, view=view, spacing=sp,
      thickness_mm=thickness, series_number=1 + si * 2 + vi, instance_number=1,
      monochrome1=plan.monochrome1 and exam.domain == "ffdm",
      kvp=float(26 + round(thickness / 10)), exposure_mas=float(60 + 2 * thickness),
      force_n=float(80 + (index * 31 + si * 7) % 60))


def ffdm_stored(q: np.ndarray, support: np.ndarray, sp: float, vendor: vd.Vendor,
                monochrome1: bool, jitter: float) -> np.ndarray:
  """FFDM "For Presentation" processing: measured log signal -> stored pixel values."""
  q = vd.equalize(q, support, vendor.equalize, sp)
  lo, hi = vd.window_stats(q[support])
  return vd.to_stored((q - lo) / (hi - lo), support, vendor, monochrome1, jitter)


def _write_ffdm(path: str, tissue, skin, support, lesion, sp: float, vendor: vd.Vendor,
                info: ImageInfo, nrng: np.random.Generator, jitter: float) -> None:
  q = acq.acquire_ffdm(tissue, skin, support, lesion, sp, acq.AcquisitionParams(), nrng)
  stored = ffdm_stored(q, support, sp, vendor, info.monochrome1, jitter)
  write_ffdm(path, stored, info, vendor, vd.window(stored[support], vendor))


def _write_dbt(path: str, cfg: SyntheticConfig, b, tissue, skin, support, lesion, sp: float,
               vendor: vd.Vendor, info: ImageInfo, nrng: np.random.Generator, jitter: float,
               per_slice: bool) -> None:
  """Limited-angle acquisition, shift-and-add slices windowed on a few slices and the MIP."""
  angles = acq.dbt_angles(cfg.dbt_projections, cfg.dbt_angle_deg)
  proj = acq.acquire_dbt_projections(tissue, skin, support, lesion, sp, angles,
                                     acq.AcquisitionParams(), nrng)
  heights = acq.slice_heights(b.thickness, cfg.dbt_slices)
  stats_idx = np.unique(np.linspace(0, len(heights) - 1, min(6, len(heights))).astype(int))
  stats = [acq.reconstruct_slice(proj, angles, float(heights[j]), sp) for j in stats_idx]
  lo, _ = vd.window_stats(np.concatenate([s[support] for s in stats]), 1.0, 99.0)
  _, hi = vd.window_stats(np.max(stats, axis=0)[support], 1.0, 99.7)
  del stats
  frames = (vd.to_stored((s - lo) / (hi - lo), support, vendor, False, jitter)
            for s in acq.iter_slices(proj, angles, heights, sp))
  mid = vd.to_stored((acq.reconstruct_slice(proj, angles, 0.0, sp) - lo) / (hi - lo),
                     support, vendor, False, jitter)
  write_dbt(path, frames, heights, info, vendor, vd.window(mid[support], vendor), per_slice,
            cfg.dbt_shape)


def _render_view(cfg: SyntheticConfig, geo: _Geometry, plan: PatientPlan, seed: int, si: int,
                 vi: int, exams: Sequence[_Exam], out_dir: str,
                 ffdm_vendor: vd.Vendor | None) -> list[dict]:
  """Writes one breast view (side si, view vi) in every exam; returns its manifest rows."""
  index, side, view = plan.index, SIDES[si], VIEWS[vi]
  b, tissue, flip = _breast(cfg, geo, seed, index, si, vi)
  rows = []
  for exam in exams:
    label = plan.label if (exam.with_lesion and side == plan.side) else "normal"
    dbt = exam.domain == "dbt"
    shape, sp = (cfg.dbt_shape, geo.spacing_dbt) if dbt else (cfg.ffdm_shape, geo.spacing_ffdm)
    lesion = ph.make_lesion(_rng(seed, index, 3, si), label, b, shape, sp, flip,
                            cfg.lesion_scale) if label != "normal" else None
    skin, support = _skin_and_support(b, shape, sp, flip)
    nrng = _rng(seed, index, 2, exam.key, si, vi)
    jitter = float(nrng.uniform(-0.1, 0.1))
    info = _image_info(plan, exam, seed, si, vi, sp, b.thickness)
    box = lesion.box if lesion is not None else None
    if label == "benign" and not plan.benign_box:
      box = None
    rel = os.path.join("dicom", plan.patient_id, exam.exam_id, info.image_id)
    if not dbt:
      rel += ".dcm"
      vendor = ffdm_vendor or vd.FFDM_VENDORS[plan.ffdm_vendor]
      _write_ffdm(os.path.join(out_dir, rel), tissue, skin, support, lesion, sp, vendor, info,
                  nrng, jitter)
    else:
      rel += "" if plan.per_slice else ".dcm"
      _write_dbt(os.path.join(out_dir, rel), cfg, b, tissue, skin, support, lesion, sp,
                 vd.DBT_VENDORS[plan.dbt_vendor], info, nrng, jitter, plan.per_slice)
    rows.append(dict(zip(MANIFEST_COLUMNS, [
        plan.patient_id, exam.exam_id, info.image_id, exam.domain, rel.replace(os.sep, "/"),
        label, side, view, *_box_cols(box), ""])))
  return rows


def _render_patient(args) -> list[dict]:
  """Renders and writes every image of one patient; returns its manifest rows.

  `args` = (cfg, seed, index, out_dir, paper_proportions[, ffdm_vendor]); `ffdm_vendor`
  replaces the patient's FFDM vendor (a controlled response shift).
  """
  cfg, seed, index, out_dir, paper_proportions, *rest = args
  ffdm_vendor = rest[0] if rest else None
  plan = plan_patient(cfg, seed, index, paper_proportions)
  geo = _geometry(cfg)
  exams = _exams(plan)
  rows: list[dict] = []
  for si in range(len(SIDES)):
    for vi in range(len(VIEWS)):
      rows.extend(_render_view(cfg, geo, plan, seed, si, vi, exams, out_dir, ffdm_vendor))
  order = {e.exam_id: n for n, e in enumerate(exams)}
  rows.sort(key=lambda r: (order[r["exam_id"]], r["image_id"]))
  return rows


def manifest_text(rows: list[dict]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def generate_cohort(out_dir: str, cfg: SyntheticConfig, seed: int, *,
                    num_patients: int | None = None, workers: int = 1,
                    paper_proportions: bool = False, patients: Sequence[int] | None = None,
                    ffdm_vendor: vd.Vendor | None = None,
                    splits: dict[str, str] | None = None) -> CohortReport:
  """Writes `<out_dir>/dicom/...` and `<out_dir>/manifest.csv`; returns counts and wall time.

  `patients` renders only those patient indices (default ``range(num_patients)``): a patient's
  files do not depend on which others are rendered. `ffdm_vendor` renders every FFDM image
  through that vendor instead of the patient's own (a controlled response shift). `splits`
  ({patient_id: split}) fills the manifest's split column.
  """
  t0 = time.perf_counter()
  n = cfg.num_patients if num_patients is None else int(num_patients)
  indices = list(range(n)) if patients is None else [int(i) for i in patients]
  os.makedirs(out_dir, exist_ok=True)
  tasks = [(cfg, int(seed), i, out_dir, paper_proportions, ffdm_vendor) for i in indices]
  if workers <= 1 or len(tasks) <= 1:
    results = [_render_patient(t) for t in tasks]
  else:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
      results = list(ex.map(_render_patient, tasks,
                            chunksize=max(1, len(tasks) // (8 * workers))))
  rows = [r for rs in results for r in rs]
  for r in rows:
    r["split"] = (splits or {}).get(r["patient_id"], "")
  path = os.path.join(out_dir, "manifest.csv")
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    f.write(manifest_text(rows))
  os.replace(tmp, path)
  info = {"seed": int(seed), "num_patients": len(indices), "paper_proportions": paper_proportions,
          "synthetic": dataclasses.asdict(cfg),
          "images": {d: sum(r["domain"] == d for r in rows) for d in ("ffdm", "dbt")},
          "labels": {d: {l: sum(r["domain"] == d and r["label"] == l for r in rows) for l in LABELS}
                     for d in ("ffdm", "dbt")}}
  if ffdm_vendor is not None:
    info["ffdm_vendor"] = dataclasses.asdict(ffdm_vendor)
  with open(os.path.join(out_dir, "cohort.json"), "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  return CohortReport(out_dir, path, len(indices), info["images"]["ffdm"], info["images"]["dbt"],
                      time.perf_counter() - t0)


def render_signals(cfg: SyntheticConfig, seed: int, index: int, side: str, view: str, *,
                   with_lesion: bool = True, label: str | None = None) -> dict:
  """Measured signals of one breast view of the index visit (before the vendor mapping).

  Returns ``{"label", "kind", "box", "ffdm": float32 [H, W] log signal, "mip": float32 [H, W]
  maximum over the reconstructed DBT slices, "support": bool [H, W]}``; the noise is fixed by
  (seed, index, side, view), so ``with_lesion=False`` renders the same breast without its
  finding (for tests and figures). Assumes ffdm_shape == dbt_shape. `label` overrides the
  patient's class.
  """
  plan = plan_patient(cfg, seed, index)
  si, vi = SIDES.index(side), VIEWS.index(view)
  geo = _geometry(cfg)
  sp = geo.spacing_ffdm
  b, tissue, flip = _breast(cfg, geo, seed, index, si, vi)
  label = label or (plan.label if side == plan.side else "normal")
  lesion = ph.make_lesion(_rng(seed, index, 3, si), label, b, cfg.ffdm_shape, sp, flip,
                          cfg.lesion_scale) if label != "normal" else None
  box = lesion.box if lesion is not None else None
  kind = lesion.kind if lesion is not None else ""
  if not with_lesion:
    lesion = None
  skin, support = _skin_and_support(b, cfg.ffdm_shape, sp, flip)
  params = acq.AcquisitionParams()
  ffdm = acq.acquire_ffdm(tissue, skin, support, lesion, sp, params,
                          _rng(seed, index, 2, 2, si, vi))
  angles = acq.dbt_angles(cfg.dbt_projections, cfg.dbt_angle_deg)
  proj = acq.acquire_dbt_projections(tissue, skin, support, lesion, sp, angles, params,
                                     _rng(seed, index, 2, 3, si, vi))
  heights = acq.slice_heights(b.thickness, cfg.dbt_slices)
  mip = np.max(list(acq.iter_slices(proj, angles, heights, sp)), axis=0)
  return {"label": label, "kind": kind, "box": box, "ffdm": ffdm, "mip": mip, "support": support}
