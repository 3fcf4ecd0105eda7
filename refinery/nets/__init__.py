"""Network families; importing this package registers every network in ``refinery.registry``.

| module   | registers                                                                    |
|----------|------------------------------------------------------------------------------|
| `simgan` | `simgan-refiner-{gaze,hand,small}`, `simgan-discriminator-{gaze,hand,small}` |
| `gaze`   | `gaze-estimator`, `gaze-estimator-small`                                      |

A new family is one module here that decorates its builders with
``refinery.registry.register_network`` and one import line below.
"""

from refinery.nets import gaze, simgan

__all__ = ["gaze", "simgan"]
