"""From a network's probability map to what a clinician sees (paper Sec. II-D).

- `detect`: a CXR is COVID-19 if any pixel of the prediction Ŷ is >= `THRESHOLD` (0.5).
- `ensemble`: mean of several models' probability maps.
- `infection_map`: Ŷ through the jet colour scale, hue and saturation of that colour with the
  value (brightness) of the CXR, so the infection is shown translucent over the anatomy; pixels
  with (near) zero probability show the CXR unchanged.
- `severity`: how much of the image / of each lung is infected, with a 0-4 grade.
- `gradcam.grad_cam`: activation maps of the classifiers (imports TensorFlow when called).

Django-free and TensorFlow-free (numpy + Pillow), so maps can be drawn in any worker. The
detection rule and ensembling live in `training.nets.detection`, since evaluation in training
applies the same rule; they are re-exported here.
"""

from inference.maps.colour import EPSILON, infection_map, jet
from inference.maps.extent import GRADE_LABELS, Severity, grade_for, severity
from training.nets.detection import THRESHOLD, detect, ensemble

__all__ = [
    "EPSILON",
    "GRADE_LABELS",
    "THRESHOLD",
    "Severity",
    "detect",
    "ensemble",
    "grade_for",
    "infection_map",
    "jet",
    "severity",
]
