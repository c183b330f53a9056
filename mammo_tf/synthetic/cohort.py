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

import numpy as np

from mammo_tf.config import LABELS, SyntheticConfig
from mammo_tf.synthetic import acquisition as acq
from mammo_tf.synthetic import phantom as ph
from mammo_tf.synthetic import vendors as vd
from mammo_tf.synthetic.dicom_writer import ImageInfo, write_dbt, write_ffdm

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
  """Draws one patient's composition (deterministic in (seed, index))."""
  rng = _rng(seed, index, 0)
  dbt_only = rng.uniform() < cfg.dbt_only_share
  has_dbt = dbt_only or rng.uniform() < cfg.dbt_share / max(1e-9, 1.0 - cfg.dbt_only_share)
  if paper_proportions:
    probs = np.asarray(PAPER_CLASS_PROBS_DBT if has_dbt else PAPER_CLASS_PROBS_FFDM, float)
  else:
    probs = np.asarray(cfg.class_probs, float)
  label = LABELS[int(rng.choice(4, p=probs / probs.sum()))]
  return PatientPlan(
      index=index, patient_id=f"SYN{index:05d}", age=int(rng.integers(40, 76)),
      label=label, side=SIDES[int(rng.integers(2))], has_ffdm=not dbt_only,
      has_dbt=bool(has_dbt), prior=bool(rng.uniform() < cfg.prior_exam_share),
      ffdm_vendor=int(rng.integers(len(vd.FFDM_VENDORS))),
      dbt_vendor=int(rng.integers(len(vd.DBT_VENDORS))),
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


def _render_patient(args) -> list[dict]:
  """Renders and writes every image of one patient; returns its manifest rows."""
  cfg, seed, index, out_dir, paper_proportions = args
  plan = plan_patient(cfg, seed, index, paper_proportions)
  params = acq.AcquisitionParams()
  rows_out: list[dict] = []
  fh, fw = cfg.ffdm_shape
  fov_rows, fov_cols = ph.FOV_ROWS_MM, ph.FOV_ROWS_MM * fw / fh
  sp_f = fov_rows / fh
  sp_d = fov_rows / cfg.dbt_shape[0]
  grid = _grid_shape(cfg.ffdm_shape, cfg.phantom_max_side)
  grid_sp = fov_rows / grid[0]
  pid = plan.patient_id
  info0 = dict(seed=seed, patient_id=pid, patient_name=f"SYNTHETIC^PATIENT{index:05d}",
               birth_date=_date(plan.day - plan.age * 365 - 40)[:4] + "0101", age=plan.age)
  exams = []  # (exam_id, domain, day, with_lesion, k)
  if plan.has_ffdm and plan.prior:
    exams.append((f"{pid}-E1", "ffdm", plan.day - 370, False, 1))
  if plan.has_ffdm:
    exams.append((f"{pid}-E{len(exams) + 1}", "ffdm", plan.day, True, 2))
  if plan.has_dbt:
    exams.append((f"{pid}-E{len(exams) + 1}", "dbt", plan.day, True, 3))
  for si, side in enumerate(SIDES):
    for vi, view in enumerate(VIEWS):
      brng = _rng(seed, index, 1, si, vi)
      b = ph.sample_shape(brng, view, fov_rows, fov_cols)
      tissue = ph.make_tissue(brng, b, grid, grid_sp, cfg.phantom_layers)
      flip = side == "R"
      if flip:
        tissue.mu_dz = np.ascontiguousarray(tissue.mu_dz[:, :, ::-1])
      for exam_id, domain, day, with_lesion, k in exams:
        label = plan.label if (with_lesion and side == plan.side) else "normal"
        shape = cfg.dbt_shape if domain == "dbt" else cfg.ffdm_shape
        sp = sp_d if domain == "dbt" else sp_f
        lesion = ph.make_lesion(_rng(seed, index, 3, si), label, b, shape, sp, flip,
                                cfg.lesion_scale) if label != "normal" else None
        skin, thick, support = ph.skin_and_support(b, shape, sp)
        if flip:
          skin, support = skin[:, ::-1].copy(), support[:, ::-1].copy()
        nrng = _rng(seed, index, 2, k, si, vi)
        jitter = float(nrng.uniform(-0.1, 0.1))
        image_id = f"{exam_id}-{side}{view}"
        info = ImageInfo(
            **info0, exam_id=exam_id, accession=f"A{seed % 1000:03d}{index:05d}{k}",
            study_date=_date(day), study_time=f"{8 + (index * 7 + k) % 9:02d}{(index * 13) % 60:02d}00",
            image_id=image_id, laterality=side, view=view, spacing=sp, thickness_mm=b.thickness,
            series_number=1 + si * 2 + vi, instance_number=1,
            monochrome1=plan.monochrome1 and domain == "ffdm", kvp=float(26 + round(b.thickness / 10)),
            exposure_mas=float(60 + 2 * b.thickness), force_n=float(80 + (index * 31 + si * 7) % 60))
        box = lesion.box if lesion is not None else None
        if label == "benign" and not plan.benign_box:
          box = None
        rel = os.path.join("dicom", pid, exam_id, image_id)
        if domain == "ffdm":
          vendor = vd.FFDM_VENDORS[plan.ffdm_vendor]
          q = acq.acquire_ffdm(tissue, skin, support, lesion, sp, params, nrng)
          q = vd.equalize(q, support, vendor.equalize, sp)
          lo, hi = vd.window_stats(q[support])
          stored = vd.to_stored((q - lo) / (hi - lo), support, vendor, info.monochrome1, jitter)
          rel += ".dcm"
          write_ffdm(os.path.join(out_dir, rel), stored, info, vendor,
                     vd.window(stored[support], vendor))
        else:
          vendor = vd.DBT_VENDORS[plan.dbt_vendor]
          angles = acq.dbt_angles(cfg.dbt_projections, cfg.dbt_angle_deg)
          proj = acq.acquire_dbt_projections(tissue, skin, support, lesion, sp, angles, params, nrng)
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
          if not plan.per_slice:
            rel += ".dcm"
          write_dbt(os.path.join(out_dir, rel), frames, heights, info, vendor,
                    vd.window(mid[support], vendor), plan.per_slice, shape)
          del proj
        rows_out.append(dict(zip(MANIFEST_COLUMNS, [
            pid, exam_id, image_id, domain, rel.replace(os.sep, "/"), label, side, view,
            *_box_cols(box), ""])))
  order = {e[0]: n for n, e in enumerate(exams)}
  rows_out.sort(key=lambda r: (order[r["exam_id"]], r["image_id"]))
  return rows_out


def manifest_text(rows: list[dict]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def generate_cohort(out_dir: str, cfg: SyntheticConfig, seed: int, *,
                    num_patients: int | None = None, workers: int = 1,
                    paper_proportions: bool = False) -> CohortReport:
  """Writes `<out_dir>/dicom/...` and `<out_dir>/manifest.csv`; returns counts and wall time."""
  t0 = time.perf_counter()
  n = cfg.num_patients if num_patients is None else int(num_patients)
  os.makedirs(out_dir, exist_ok=True)
  tasks = [(cfg, int(seed), i, out_dir, paper_proportions) for i in range(n)]
  if workers <= 1 or n <= 1:
    results = [_render_patient(t) for t in tasks]
  else:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
      results = list(ex.map(_render_patient, tasks, chunksize=max(1, n // (8 * workers))))
  rows = [r for rs in results for r in rs]
  path = os.path.join(out_dir, "manifest.csv")
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    f.write(manifest_text(rows))
  os.replace(tmp, path)
  info = {"seed": int(seed), "num_patients": n, "paper_proportions": paper_proportions,
          "synthetic": dataclasses.asdict(cfg),
          "images": {d: sum(r["domain"] == d for r in rows) for d in ("ffdm", "dbt")},
          "labels": {d: {l: sum(r["domain"] == d and r["label"] == l for r in rows) for l in LABELS}
                     for d in ("ffdm", "dbt")}}
  with open(os.path.join(out_dir, "cohort.json"), "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  return CohortReport(out_dir, path, n, info["images"]["ffdm"], info["images"]["dbt"],
                      time.perf_counter() - t0)


def render_signals(cfg: SyntheticConfig, seed: int, index: int, side: str, view: str, *,
                   with_lesion: bool = True, label: str | None = None) -> dict:
  """Measured signals of one breast view of the index visit (before the vendor mapping).

  Returns ``{"label", "kind", "box", "ffdm": float32 [H, W] log signal, "mip": float32 [H, W]
  maximum over the reconstructed DBT slices, "support": bool [H, W]}``; the noise is fixed by (seed, index, side, view), so
  ``with_lesion=False`` renders the same breast without its finding (for tests and
  figures). Assumes ffdm_shape == dbt_shape. `label` overrides the patient's class.
  """
  plan = plan_patient(cfg, seed, index)
  si, vi = SIDES.index(side), VIEWS.index(view)
  fh, fw = cfg.ffdm_shape
  fov_rows, fov_cols = ph.FOV_ROWS_MM, ph.FOV_ROWS_MM * fw / fh
  sp = fov_rows / fh
  grid = _grid_shape(cfg.ffdm_shape, cfg.phantom_max_side)
  brng = _rng(seed, index, 1, si, vi)
  b = ph.sample_shape(brng, view, fov_rows, fov_cols)
  tissue = ph.make_tissue(brng, b, grid, fov_rows / grid[0], cfg.phantom_layers)
  flip = side == "R"
  if flip:
    tissue.mu_dz = np.ascontiguousarray(tissue.mu_dz[:, :, ::-1])
  label = label or (plan.label if side == plan.side else "normal")
  lesion = ph.make_lesion(_rng(seed, index, 3, si), label, b, cfg.ffdm_shape, sp, flip,
                          cfg.lesion_scale) if label != "normal" else None
  box = lesion.box if lesion is not None else None
  kind = lesion.kind if lesion is not None else ""
  if not with_lesion:
    lesion = None
  skin, _, support = ph.skin_and_support(b, cfg.ffdm_shape, sp)
  if flip:
    skin, support = skin[:, ::-1].copy(), support[:, ::-1].copy()
  params = acq.AcquisitionParams()
  k_ffdm = 2
  ffdm = acq.acquire_ffdm(tissue, skin, support, lesion, sp, params, _rng(seed, index, 2, k_ffdm, si, vi))
  angles = acq.dbt_angles(cfg.dbt_projections, cfg.dbt_angle_deg)
  proj = acq.acquire_dbt_projections(tissue, skin, support, lesion, sp, angles, params,
                                     _rng(seed, index, 2, 3, si, vi))
  heights = acq.slice_heights(b.thickness, cfg.dbt_slices)
  mip = np.max(list(acq.iter_slices(proj, angles, heights, sp)), axis=0)
  return {"label": label, "kind": kind, "box": box, "ffdm": ffdm, "mip": mip, "support": support}
