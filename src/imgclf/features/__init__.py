"""A pretrained backbone as a feature extractor: its cached embeddings of a dataset at a size, the sizes worth
probing, and the linear probe on them. The search tries the probe at several sizes, the doctor's label check
cross-validates it, the learning curve fits it on slices of the data: all from here (:mod:`.backbone`,
:mod:`.probe`), through the one embedding cache (:mod:`imgclf.data.features`).
"""
