"""MPIIGaze (Zhang et al., CVPR 2015), normalised eye images: real gaze crops + gaze labels.

On disk (the root is the dataset directory holding ``Data/Normalized/``, or that directory)::

    Data/Normalized/pXX/dayNN.mat    one MATLAB file per participant and day

Each day file holds a struct ``data`` with ``left`` and ``right``, each with ``image``
(N, 36, 60) uint8 grayscale, ``gaze`` (N, 3) unit vectors and ``pose`` (N, 3) head rotations
as Rodrigues vectors, all in the normalised camera frame (x right, y down, z away from the
camera), and usually ``filenames`` (N cells, the source frame names). A day file with one
sample loads with every array squeezed one rank lower (scipy's ``squeeze_me``, which the
field's readers use; ``filenames`` even becomes a bare string): each array is brought back to
(N, ...) here, so single-sample days convert like the others.

One item is one day file; it gives 2N samples, for each index the left eye then the right.
Labels use the field names and conventions of ``refinery/sim/eyes.py``:

- ``look_vec`` g = the file's gaze vector, normalised; ``gaze`` = {pitch: arcsin(-g_y), yaw:
  arctan2(-g_x, -g_z)} radians (positive pitch looks up, positive yaw moves the iris to the
  image left) — the frame MPIIGaze already uses, and hysts' ``convert_gaze``.
- ``head_pose`` [pitch, yaw, roll] radians of the head rotation R = Rodrigues(pose), taken as
  hysts' ``convert_pose`` does (pitch = arcsin(R[1, 2]), yaw = arctan2(R[0, 2], R[2, 2])) plus
  roll = arctan2(R[1, 0], R[1, 1]), i.e. R = Ry(yaw) Rx(-pitch) Rz(roll). ``head_rvec`` is the
  Rodrigues vector itself.
- Right eyes are mirrored so that every sample looks like a left eye (the usual convention;
  hysts' preprocess_mpiigaze.py): the image is flipped left-right, the gaze vector's x is
  negated (yaw changes sign, pitch does not), and the head rotation is mirrored as
  R' = M R M with M = diag(-1, 1, 1): its Rodrigues vector becomes (r_x, -r_y, -r_z), so head
  yaw and roll change sign and pitch does not. ``mirrored`` records it; ``eye`` says which.
- ``size`` (h, w) resizes the 36×60 image with area averaging (e.g. (35, 55) as SimGAN);
  ``resize`` then records the original size. The default keeps it.

Keys: ``mpiigaze-p00-day01-0000-left`` (participant, day, index in the day file, eye).

References read: hysts/pytorch_mpiigaze tools/preprocess_mpiigaze.py (the .mat layout, the
single-sample squeeze, ``convert_gaze`` / ``convert_pose``, mirroring the right eye).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import cv2
import numpy as np

from refinery.formats import Item, register_format
from refinery.formats.unityeyes import check_size, head_angles, resize
from refinery.samples import GRAY8, MALFORMED, UNDECODABLE, SampleError, encode_image, encode_json

EYES = ("left", "right")
_PERSON = re.compile(r"^p\d+$")
_DAY = re.compile(r"^day\d+\.mat$")
MIRROR = np.diag([-1.0, 1.0, 1.0])


def gaze_angles(g: np.ndarray) -> tuple[float, float]:
    """(pitch, yaw) of a unit gaze vector, as in sim/eyes.py."""
    return math.asin(max(-1.0, min(1.0, -g[1]))), math.atan2(-g[0], -g[2])


def _field(struct: Any, name: str, *, url: str) -> Any:
    try:
        return getattr(struct, name)
    except AttributeError:
        raise SampleError(MALFORMED, f"no field {name!r} in the day file's data", url=url) from None


def _rows(value: Any, width: int | None, *, what: str, url: str) -> np.ndarray:
    """An (N, width) array or, squeezed by scipy for N = 1, a (width,) one → (N, width)."""
    array = np.asarray(value)
    if width is not None and array.ndim == 1 and array.shape[0] == width:
        array = array[None]
    if array.ndim != 2 or (width is not None and array.shape[1] != width):
        raise SampleError(
            MALFORMED, f"{what}: expected (N, {width}), got shape {array.shape}", url=url
        )
    return array


def _images(value: Any, *, what: str, url: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 2:  # one sample, squeezed
        array = array[None]
    if array.ndim != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise SampleError(
            MALFORMED,
            f"{what}: expected (N, H, W) uint8 images, got shape {array.shape} {array.dtype}",
            url=url,
        )
    return array


@register_format(
    "mpiigaze",
    domain="gaze",
    summary="MPIIGaze Data/Normalized/pXX/dayNN.mat → 36×60 gray eyes (right mirrored) + gaze",
)
class MPIIGaze:
    """Reader over MPIIGaze's normalised day files; see the module docstring."""

    default_shard_size = 2  # day files per shard: up to ~1000 frames × 2 eyes each

    def __init__(self, root: str, *, size: tuple[int, int] | None = None):
        self.root = os.fspath(root)
        self.size = None if size is None else check_size(size)
        for sub in (os.path.join("Data", "Normalized"), "Normalized", ""):
            candidate = os.path.join(self.root, sub) if sub else self.root
            if os.path.isdir(candidate) and any(_PERSON.match(n) for n in os.listdir(candidate)):
                self.normalized = candidate
                break
        else:
            raise FileNotFoundError(
                f"no MPIIGaze Data/Normalized/pXX directories under {self.root!r}"
            )

    def items(self) -> list[Item]:
        items = []
        people = sorted(n for n in os.listdir(self.normalized) if _PERSON.match(n))
        for person in people:
            folder = os.path.join(self.normalized, person)
            if not os.path.isdir(folder):
                continue
            for day in sorted(n for n in os.listdir(folder) if _DAY.match(n)):
                path = os.path.join(folder, day)
                name = os.path.relpath(path, self.root)[: -len(".mat")]
                items.append(Item(name=name.replace(os.sep, "/"), paths=(path,)))
        if not items:
            raise ValueError(f"no pXX/dayNN.mat files in {self.normalized!r}")
        return items

    def _load(self, path: str) -> dict[str, Any]:
        import scipy.io

        try:
            return scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError...
            raise SampleError(
                UNDECODABLE, f"not a readable MATLAB file: {type(exc).__name__}: {exc}", url=path
            ) from None

    def convert(self, item: Item) -> list[dict[str, Any]]:
        (path,) = item.paths
        person = os.path.basename(os.path.dirname(path))
        day = os.path.basename(path)[: -len(".mat")]
        mat = self._load(path)
        if "data" not in mat:
            raise SampleError(MALFORMED, "no variable 'data' in the day file", url=path)
        data = mat["data"]
        eyes = {}
        for eye in EYES:
            struct = _field(data, eye, url=path)
            eyes[eye] = (
                _images(_field(struct, "image", url=path), what=f"data.{eye}.image", url=path),
                _rows(_field(struct, "gaze", url=path), 3, what=f"data.{eye}.gaze", url=path),
                _rows(_field(struct, "pose", url=path), 3, what=f"data.{eye}.pose", url=path),
            )
        counts = {len(array) for arrays in eyes.values() for array in arrays}
        filenames = self._filenames(mat, path)
        if filenames is not None:
            counts.add(len(filenames))
        if len(counts) != 1:
            raise SampleError(
                MALFORMED,
                f"images, gaze, pose and filenames disagree on N: {sorted(counts)}",
                url=path,
            )
        (count,) = counts
        source_file = os.path.relpath(path, self.root).replace(os.sep, "/")
        samples = []
        for index in range(count):
            for eye in EYES:
                images, gazes, poses = eyes[eye]
                key = f"mpiigaze-{person}-{day}-{index:04d}-{eye}"
                try:
                    sample = self._sample(
                        images[index], gazes[index], poses[index], right=eye == "right"
                    )
                except ValueError as exc:
                    raise SampleError(MALFORMED, str(exc), key=key, url=path) from None
                image, label = sample
                label["eye"] = eye
                label["source"] = {
                    "dataset": "mpiigaze",
                    "file": source_file,
                    "person": person,
                    "day": day,
                    "index": index,
                    "image": filenames[index] if filenames is not None else None,
                }
                samples.append(
                    {"__key__": key, "png": encode_image(image, GRAY8), "json": encode_json(label)}
                )
        return samples

    @staticmethod
    def _filenames(mat: dict[str, Any], path: str) -> list[str] | None:
        if "filenames" not in mat:
            return None
        value = mat["filenames"]
        if isinstance(value, str):  # one sample, squeezed to a bare string
            return [value]
        names = np.asarray(value, dtype=object).ravel().tolist()
        if not all(isinstance(n, str) for n in names):
            raise SampleError(MALFORMED, "filenames: expected a cell array of strings", url=path)
        return names

    def _sample(
        self, image: np.ndarray, gaze: np.ndarray, pose: np.ndarray, *, right: bool
    ) -> tuple[np.ndarray, dict[str, Any]]:
        g = np.asarray(gaze, dtype=np.float64)
        rvec = np.asarray(pose, dtype=np.float64)
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(rvec))):
            raise ValueError("gaze or pose is not finite")
        norm = float(np.linalg.norm(g))
        if not norm > 1e-9:
            raise ValueError("gaze vector has zero length")
        g = g / norm
        rotation = cv2.Rodrigues(rvec.reshape(3, 1))[0]
        if right:
            image = image[:, ::-1]
            g = g * np.array([-1.0, 1.0, 1.0])
            rotation = MIRROR @ rotation @ MIRROR
            rvec = rvec * np.array([1.0, -1.0, -1.0])
        label: dict[str, Any] = {}
        if self.size is not None and image.shape != self.size:
            label["resize"] = {"from": list(image.shape), "to": list(self.size)}
            image = resize(np.ascontiguousarray(image), self.size)
        pitch, yaw = gaze_angles(g)
        label.update(
            {
                "gaze": {"pitch": pitch, "yaw": yaw},
                "look_vec": g.tolist(),
                "head_pose": head_angles(rotation),
                "head_rvec": rvec.tolist(),
                "mirrored": right,
            }
        )
        return np.ascontiguousarray(image), label
