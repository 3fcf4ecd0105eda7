"""Network families; importing this package registers every network in ``refinery.registry``.

| module      | registers                                                                          |
|-------------|------------------------------------------------------------------------------------|
| `simgan`    | `simgan-refiner-{gaze,hand,small}`, `simgan-discriminator-{gaze,hand,small,local}` |
| `gaze`      | `gaze-estimator`, `gaze-estimator-small`                                           |
| `hourglass` | `hand-hourglass{,-small}`; heatmap helpers                                         |
| `sggan`     | `sggan-generator{,-resnet,-small}`, `sggan-discriminator{,-small}`                 |
| `spigan`    | `spigan-{generator,discriminator}{,-small}`, `fcn8s-{vgg16,small}{,-depth}`        |
| `vgg`       | nothing: VGG16/VGG19 layers (torchvision indexing), `load_vgg_weights`             |

A new family is one module here that decorates its builders with
``refinery.registry.register_network`` and one import line below.
"""

from refinery.nets import gaze, hourglass, sggan, simgan, spigan, vgg

__all__ = ["gaze", "hourglass", "sggan", "simgan", "spigan", "vgg"]
