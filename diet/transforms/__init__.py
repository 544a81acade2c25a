"""Transforms: a change of a loaded model's weights between loading and profiling (e.g. SliceGPT's rotation of the
residual stream into the principal basis of its calibration activations).

A `Transform` is applied in place to the loaded model and returns what its result depends on (a JSON-able dict:
its settings, a hash of the calibration texts it read, ...). The model's fingerprint then becomes a digest of the
old fingerprint, the transform's name and that dict, so profile and dense-eval cache entries of a transformed model
never mix with those of the original basis (or of another transform). A method names its transform (`Method.
transform`); `none` leaves the model and its fingerprint alone.

Adding a transform: a module here with an `apply(model, adapter, tokenizer, calib_sets, settings) -> dict`
registered in TRANSFORMS; `settings` holds the run's `calib` settings and `seed` (how calibration sets become token
batches: `profile.calibration_batches`).

Registered:
  slicegpt  SliceGPT's rotation: per-point principal bases, shortcut matrices between them (method=slicegpt)
  pca       ours: one pooled principal basis for the whole residual stream (prune.rotate=pca)
`pca` (and `slicegpt` with method.interleave=false) is exact at full width; the interleaved `slicegpt` also zeroes
what the cut streams lose. `prune.target=hidden` then slices the rotated streams (rotation.py has the details).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from functools import partial

from diet import DietError
from diet.cache import digest
from diet.transforms import rotation


@dataclass(frozen=True)
class Transform:
    name: str
    apply: Callable | None = None    # (model, adapter, tokenizer, calib_sets, settings) -> what the result depends on

    def __call__(self, loaded, calib_sets: dict, settings: dict | None = None):
        """The loaded model, transformed in place, with its new fingerprint (the same object for `none`).
        `settings`: {"calib": the calib.* settings, "seed": int}."""
        if self.apply is None:
            return loaded
        depends_on = self.apply(loaded.model, loaded.adapter, loaded.tokenizer, calib_sets, settings or {})
        fingerprint = digest({"model": loaded.fingerprint, "transform": self.name, "depends_on": depends_on})
        return dataclasses.replace(loaded, fingerprint=fingerprint)


TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("none"),
    Transform("slicegpt", partial(rotation.apply, pooled=False)),
    Transform("pca", partial(rotation.apply, pooled=True)),
)}


def get(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise DietError(f"transform: {name!r} is not registered; registered: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]
