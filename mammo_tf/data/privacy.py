"""Salted hashing of patient, exam and image identifiers (no raw identifier leaves the converter).

Raw identifiers from the manifest (patient_id, exam_id, image_id) never reach an output file or a
log line: every record carries ``HMAC-SHA256(salt, "<kind>\\x00<value>")`` truncated to 32 hex
characters (128 bits) instead. Using HMAC with a secret salt (rather than a bare SHA-256) means the
hashes cannot be reversed by hashing a list of candidate ids (hospital ids are short and
guessable) by anyone who lacks the salt.

Where the salt comes from (`load_or_create_salt`):

* ``salt_file`` given (``--salt_file``): its contents (whitespace stripped) are the salt; nothing is
  written. Use it to give two conversions (e.g. a re-export) the same hashes.
* otherwise ``<out>/.salt``: created on the first run from ``os.urandom(32)`` (hex-encoded, mode
  0600) and reused on every later run into the same folder, so a resumed run hashes identically.

The salt is never written anywhere else (not into records, ``config.json``, ``summary.json``, logs).
Keep ``.salt`` out of any data you share: with it, ids can be confirmed by brute force.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile

SALT_FILENAME = ".salt"
HASH_HEX_CHARS = 32
_MIN_SALT_BYTES = 8


class SaltError(ValueError):
  """The salt file is missing, empty or unreadable."""


def hash_id(salt: bytes, kind: str, value: str) -> str:
  """Salted hash (hex, 32 chars) of one identifier; `kind` separates patient/exam/image spaces."""
  if not isinstance(salt, (bytes, bytearray)) or not salt:
    raise SaltError("salt must be non-empty bytes")
  msg = kind.encode("utf-8") + b"\x00" + str(value).encode("utf-8")
  return hmac.new(bytes(salt), msg, hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]


def hash_patient(salt: bytes, patient_id: str) -> str:
  return hash_id(salt, "patient", patient_id)


def hash_exam(salt: bytes, patient_id: str, exam_id: str) -> str:
  """Exams are hashed together with their patient: exam ids are often only unique per patient."""
  return hash_id(salt, "exam", f"{patient_id}\x1f{exam_id}")


def hash_image(salt: bytes, image_id: str) -> str:
  return hash_id(salt, "image", image_id)


def salt_fingerprint(salt: bytes) -> str:
  """A one-way fingerprint of the salt (for cache keys); reveals nothing usable about the salt."""
  return hashlib.sha256(b"mammo_tf-salt-fingerprint\x00" + bytes(salt)).hexdigest()[:16]


def read_salt_file(path: str) -> bytes:
  """Reads a salt file (any bytes; surrounding whitespace stripped)."""
  try:
    with open(path, "rb") as f:
      salt = f.read().strip()
  except OSError as e:
    raise SaltError(f"{path}: cannot read salt file ({e.strerror or e})") from None
  if len(salt) < _MIN_SALT_BYTES:
    raise SaltError(f"{path}: salt file holds {len(salt)} bytes; need at least {_MIN_SALT_BYTES}")
  return salt


def load_or_create_salt(out_dir: str, salt_file: str | None = None) -> bytes:
  """Salt from `salt_file`, else from ``<out_dir>/.salt`` (created atomically when absent)."""
  if salt_file:
    return read_salt_file(salt_file)
  path = os.path.join(out_dir, SALT_FILENAME)
  if os.path.exists(path):
    return read_salt_file(path)
  os.makedirs(out_dir, exist_ok=True)
  salt = os.urandom(32).hex().encode("ascii")
  fd, tmp = tempfile.mkstemp(prefix=".tmp-salt-", dir=out_dir)
  try:
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
      f.write(salt + b"\n")
    # Never replace a salt another process wrote in the meantime.
    try:
      os.link(tmp, path)
    except FileExistsError:
      pass
  finally:
    os.unlink(tmp)
  return read_salt_file(path)
