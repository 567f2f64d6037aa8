"""Synthetic face masks rendered onto face photographs from their landmarks.

There are no photo pairs of one face with and without a mask, so training
pairs are made by drawing a face mask onto a real face photo.
`FaceMaskRenderer` takes a uint8 RGB image, its 98 WFLW landmarks
(`jaxface.data.wflw`) and a `np.random.Generator`, and returns a
`RenderedMask`: the image wearing a face mask, the exact binary map of the
mask (1 = mask / hole) and the style label.

Styles (`STYLES`, label = index): the procedural masks `surgical`,
`surgical_pleated`, `n95`, `kn95`, `cloth` and `cloth_printed`; `template`, a
MaskTheFace RGBA template warped onto the face (needs `template_dir`); and
the paper's holes `box` (see `FaceMaskRenderer.box_bounds`) and `freeform`,
filled with `HOLE_FILL`.

Determinism: a render depends only on its inputs, the renderer's settings
and the generator passed to the call. Noise fields are made from a fixed
seed and templates are decoded on first use; neither is pickled, so a
renderer sent to a worker process renders the same. Pixels the renderer
changes outside the map lie on its one-pixel soft edge.

Coordinates follow the project convention: pixel (x, y) with the centre of
pixel (row i, col j) at (j, i), which is also OpenCV's drawing convention.
How each style is drawn, and its cost, is in docs/MASKS.md.
"""

from jaxface.data.facemask.geometry import estimate_yaw
from jaxface.data.facemask.holes import BOX_MARGINS_256
from jaxface.data.facemask.holes import FREEFORM_COVERAGE
from jaxface.data.facemask.holes import HOLE_FILL
from jaxface.data.facemask.holes import HOLE_STYLES
from jaxface.data.facemask.renderer import DEFAULT_STYLES
from jaxface.data.facemask.renderer import FaceMaskRenderer
from jaxface.data.facemask.renderer import MIN_IMAGE_SIZE
from jaxface.data.facemask.renderer import render
from jaxface.data.facemask.renderer import RenderedMask
from jaxface.data.facemask.renderer import STYLE_ID
from jaxface.data.facemask.renderer import STYLES
from jaxface.data.facemask.styles import PROCEDURAL_STYLES
from jaxface.data.facemask.templates import TEMPLATE_YAW_DEG

__all__ = [
    "BOX_MARGINS_256",
    "DEFAULT_STYLES",
    "FREEFORM_COVERAGE",
    "FaceMaskRenderer",
    "HOLE_FILL",
    "HOLE_STYLES",
    "MIN_IMAGE_SIZE",
    "PROCEDURAL_STYLES",
    "RenderedMask",
    "STYLES",
    "STYLE_ID",
    "TEMPLATE_YAW_DEG",
    "estimate_yaw",
    "render",
]
