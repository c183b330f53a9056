"""Reading whole output folders back for byte-for-byte comparisons in tests."""

import os


def tree_bytes(root):
  """{relative path: bytes} of every file under `root`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      p = os.path.join(dirpath, name)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


def tree_mtimes(root):
  """{relative path: modification time in ns} of every file under `root`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      p = os.path.join(dirpath, name)
      out[os.path.relpath(p, root)] = os.stat(p).st_mtime_ns
  return out
