"""The field's baseline detectors of adversarial images, as model-aware detector plugins.

Each sees the classifier under attack (``DetectorSpec(inputs="model")``) and reads its
activations through forward hooks (:mod:`.activations`):

- ``feature-squeezing``: Xu, Evans, Qi, NDSS 2018 (:mod:`.feature_squeezing`);
- ``kernel-density``: Feinman, Curtin, Shintre, Gardner 2017 (:mod:`.kernel_density`);
- ``lid``: Ma et al., ICLR 2018 (:mod:`.lid`);
- ``mahalanobis``: Lee, Lee, Lee, Shin, NeurIPS 2018 (:mod:`.mahalanobis`).

They are registered by :mod:`.plugins`; docs/detectors.md describes them.
"""
